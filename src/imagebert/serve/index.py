"""The search index: a gallery's contrastive embeddings, ids, captions, regions and thumbnails in one folder.

Layout of INDEX/ (everything the service reads or writes stays in here):
    index.json                 format, checkpoint fingerprint, embedding width, shards, upload extraction settings
    shards/00000/              one shard per `build` or `add` (an add never rewrites earlier shards)
        image_emb.npy          float32 [I, E], rows in the order of images.jsonl
        caption_emb.npy        float32 [C, E], rows in the order of captions.jsonl
        images.jsonl           {"id", "width", "height", "boxes", "thumb"} per image
        captions.jsonl         {"text", "image_id", "caption_id"} per caption
        features/              (only for `add --images`) the region-feature store made by `imagebert extract`
    thumbs/00000012.jpg        thumbnails, named by the image's position in the index (never by its id)
    uploads/                   transient files of uploaded images while the service reads them

Embeddings are computed with `retrieval.scorers.embed_gallery` on the gallery `retrieval.evaluate` builds from the
same dataset split, so the stored vectors are the ones `imagebert evaluate --mode fast` ranks with.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagebert.config_utils import ConfigError
from imagebert.errors import InputError

FORMAT = "imagebert-index"
VERSION = 1
INDEX_FILE = "index.json"

__all__ = [
    "GalleryIndex",
    "IndexSummary",
    "UntrainedProjectionsError",
    "add_to_index",
    "build_index",
    "checkpoint_fingerprint",
    "itc_projections_trained",
]


class UntrainedProjectionsError(InputError):
    """The checkpoint's contrastive projections never received a loss: its first-stage embeddings are random."""


def itc_projections_trained(config: Any) -> bool:
    """True when the checkpoint's ITC projections were trained (the rule shared with the modeling area)."""
    try:
        from imagebert.modeling.model import itc_projections_trained as rule
    except ImportError:  # the modeling area's copy of the rule is not there: same rule here
        return (getattr(config, "itc_trained_steps", 0) or 0) > 0
    return bool(rule(config))


def untrained_message(checkpoint: str | os.PathLike) -> str:
    return (
        f"{checkpoint}: the contrastive (ITC) projections of this checkpoint were never trained "
        "(config itc_trained_steps = 0), so its text and image embeddings would rank at random. Pre-train with "
        "the ITC task on (--set tasks.itc=true; formerly model.task_itc) or fine-tune with the ITC loss on "
        "(--set loss.itc=1.0), then build the index from that checkpoint."
    )


def require_trained_projections(model_config: Any, checkpoint: str | os.PathLike) -> None:
    if not itc_projections_trained(model_config):
        raise UntrainedProjectionsError(untrained_message(checkpoint))


def checkpoint_fingerprint(checkpoint: str | os.PathLike) -> str:
    """sha256 over the weights and the config: an index only answers for the checkpoint that built it."""
    checkpoint = Path(checkpoint)
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        p = checkpoint / name
        if not p.is_file():
            raise FileNotFoundError(f"{checkpoint}: not a checkpoint folder (no {name})")
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


@dataclass
class IndexSummary:
    path: Path
    shard: str
    images_added: int
    captions_added: int
    total_images: int
    total_captions: int
    thumbnails: int
    seconds: float
    peak_rss_mib: float

    def text(self) -> str:
        return (
            f"{self.path}: shard {self.shard} +{self.images_added} images, +{self.captions_added} captions "
            f"({self.thumbnails} thumbnails) in {self.seconds:.1f} s; index now {self.total_images} images, "
            f"{self.total_captions} captions"
        )


# ---------------------------------------------------------------------------------------------- sources


@dataclass
class _Source:
    """What a shard is made of: a retrieval Gallery plus where its regions live."""

    gallery: Any  # imagebert.retrieval.scorers.Gallery
    caption_ids: list[str]
    store_path: Path
    description: str


def _dataset_source(dataset: str | os.PathLike, split: str | None) -> _Source:
    from imagebert.data.dataset import PairDataset, load_dataset_spec
    from imagebert.retrieval.evaluate import gallery_from_dataset

    ds = PairDataset(load_dataset_spec(dataset), split=None if split in (None, "all") else split)
    if not ds.captions:
        raise InputError(f"split {split!r} has no captions", path=dataset)
    g = gallery_from_dataset(ds)  # the evaluation's own image order (first appearance in the caption file)
    return _Source(
        g, [c.caption_id for c in ds.captions], Path(ds.store.path).resolve(), f"{dataset}:{split}"
    )


def _store_source(features: str | os.PathLike, captions: str | os.PathLike | None) -> _Source:
    from imagebert.data.captions import read_caption_list
    from imagebert.data.store import FeatureStore
    from imagebert.retrieval.scorers import Gallery

    store = FeatureStore(features)
    image_ids = list(store.ids())
    column = {iid: i for i, iid in enumerate(image_ids)}
    caps = [] if captions is None else read_caption_list(captions)
    missing = sorted({c.image_id for c in caps if c.image_id not in column})
    if missing:
        raise InputError(
            f"{len(missing)} caption image ids are not in the feature store {features} (first: "
            f"{', '.join(missing[:5])})",
            path=captions,
            field="image_id",
        )
    g = Gallery(
        texts=[c.text for c in caps],
        caption_image=np.array([column[c.image_id] for c in caps], dtype=np.int64),
        image_ids=image_ids,
        get_record=lambda i: store[image_ids[i]],
    )
    return _Source(g, [c.caption_id for c in caps], Path(features).resolve(), f"{features}+{captions}")


def _source(dataset, split, features, captions) -> _Source:  # noqa: ANN001
    if (dataset is None) == (features is None):
        raise ConfigError("give either a dataset YAML or a feature store (with an optional caption file)")
    return _dataset_source(dataset, split) if dataset is not None else _store_source(features, captions)


def _image_files(images_dir: str | os.PathLike | None) -> dict[str, Path]:
    """image id (file stem, as `imagebert extract` names them) -> file, refusing paths outside the folder."""
    if images_dir is None:
        return {}
    from imagebert.extraction.extract import collect_items

    items, _ = collect_items(images_dir)
    return {it.image_id: it.path for it in items}


# ---------------------------------------------------------------------------------------------- writing


def _atomic_write_text(path: Path, text: str) -> None:
    from imagebert.runtime.atomic import atomic_write_text

    atomic_write_text(path, text, fsync=False)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _extraction_settings(store_path: Path) -> dict | None:
    """How uploads must be extracted to match this gallery: the store's `imagebert extract` settings, with grid
    boxes (a user's upload has no box file). None when the store was imported from another extractor."""
    from imagebert.extraction.extract import SETTINGS_FILE

    f = store_path / SETTINGS_FILE
    if not f.is_file():
        return None
    s = json.loads(f.read_text(encoding="utf-8"))
    return {
        "backbone": s.get("backbone", "efficientnet-lite0"),
        "image_size": int(s.get("image_size", 512)),
        "pool_size": int(s.get("pool_size", 4)),
        "sampling_ratio": int(s.get("sampling_ratio", 2)),
        "weights_path": s.get("weights_path"),
        "grid": int(s.get("grid") or 4),
    }


def _thumbnail(src: Path, dst: Path, size: int) -> bool:
    from imagebert.extraction.images import ImageRejected, load_rgb_image

    try:
        img = load_rgb_image(src)
    except ImageRejected:
        return False
    img.thumbnail((size, size))
    img.save(dst, "JPEG", quality=85)
    return True


def _load_model(checkpoint: str | os.PathLike, device: str):
    from imagebert.retrieval.evaluate import load_retrieval_model

    model, collator = load_retrieval_model(checkpoint, device)
    require_trained_projections(model.config, checkpoint)
    return model, collator


def _write_shard(
    index_dir: Path,
    shard: str,
    src: _Source,
    model: Any,
    collator: Any,
    *,
    first_ordinal: int,
    images_dir: str | os.PathLike | None,
    thumb_size: int,
    device: str,
    precision: str,
    batch_size: int,
    existing_ids: set[str],
) -> tuple[int, int, int]:
    from imagebert.retrieval.scorers import embed_gallery

    g = src.gallery
    dup = [i for i in g.image_ids if i in existing_ids]
    if dup:
        raise InputError(f"{len(dup)} image ids are already in the index (first: {', '.join(dup[:5])})")
    if g.num_images == 0:
        raise InputError("the source has no images")
    final = index_dir / "shards" / shard
    work = index_dir / "shards" / f".{shard}.partial"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    # embed_gallery needs at least one text; an image-only shard embeds a placeholder and drops it
    texts = g.texts if g.num_captions else [""]
    from imagebert.retrieval.scorers import Gallery

    g_embed = Gallery(texts, g.caption_image if g.num_captions else np.zeros(1, np.int64), g.image_ids,
                      g.get_record)  # fmt: skip
    from imagebert.runtime.progress import Progress

    with Progress(f"index shard {shard}: embed", len(texts) + g.num_images, unit="items") as bar:
        t_emb, i_emb = embed_gallery(model, collator, g_embed, device=device, precision=precision,
                                     batch_size=batch_size, progress=bar)  # fmt: skip
    if not g.num_captions:
        t_emb = t_emb[:0]
    np.save(work / "image_emb.npy", i_emb.astype(np.float32))
    np.save(work / "caption_emb.npy", t_emb.astype(np.float32))
    files = _image_files(images_dir)
    thumbs = index_dir / "thumbs"
    thumbs.mkdir(exist_ok=True)
    rows, n_thumbs = [], 0
    for n, iid in enumerate(g.image_ids):
        rec = g.get_record(n)
        thumb = None
        if iid in files:
            name = f"{first_ordinal + n:08d}.jpg"
            if _thumbnail(files[iid], thumbs / name, thumb_size):
                thumb, n_thumbs = f"thumbs/{name}", n_thumbs + 1
        rows.append({"id": iid, "width": int(rec.image_width), "height": int(rec.image_height),
                     "boxes": np.round(np.asarray(rec.boxes, np.float32), 1).tolist(), "thumb": thumb})  # fmt: skip
    _write_jsonl(work / "images.jsonl", rows)
    _write_jsonl(work / "captions.jsonl", [
        {"text": t, "image_id": g.image_ids[int(ci)], "caption_id": cid}
        for t, ci, cid in zip(g.texts, g.caption_image, src.caption_ids, strict=True)
    ])  # fmt: skip
    from imagebert.runtime.atomic import replace_dir

    replace_dir(work, final)  # never a moment with a half-removed old index
    return g.num_images, g.num_captions, n_thumbs


def build_index(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dataset: str | os.PathLike | None = None,
    split: str | None = "test",
    features: str | os.PathLike | None = None,
    captions: str | os.PathLike | None = None,
    images_dir: str | os.PathLike | None = None,
    backend: str = "auto",
    device: str = "cpu",
    precision: str = "fp32",
    batch_size: int = 128,
    thumb_size: int = 256,
) -> IndexSummary:
    """Build a new index at `out` from a dataset split, or from a feature store plus a caption list."""
    from imagebert.serve.knn import BACKENDS

    t0 = time.perf_counter()
    out = Path(out)
    if (out / INDEX_FILE).exists():
        raise FileExistsError(f"{out}: an index is already there; add to it with `imagebert index add` "
                              "or choose another --out")  # fmt: skip
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    model, collator = _load_model(checkpoint, device)  # refuses untrained projections before any work
    src = _source(dataset, split, features, captions)
    out.mkdir(parents=True, exist_ok=True)
    n_img, n_cap, n_th = _write_shard(out, "00000", src, model, collator, first_ordinal=0, images_dir=images_dir,
                                      thumb_size=thumb_size, device=device, precision=precision,
                                      batch_size=batch_size, existing_ids=set())  # fmt: skip
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "checkpoint": {
            "path": str(Path(checkpoint).resolve()),
            "fingerprint": checkpoint_fingerprint(checkpoint),
            "itc_trained_steps": int(getattr(model.config, "itc_trained_steps", 0)),
        },
        "embedding_dim": int(model.config.itc_dim),
        "precision": precision,
        "backend": backend,
        "extraction": _extraction_settings(src.store_path),
        "shards": [
            {
                "name": "00000",
                "store": str(src.store_path),
                "images": n_img,
                "captions": n_cap,
                "source": src.description,
                "created": time.time(),
            }
        ],  # fmt: skip
    }
    _atomic_write_text(out / INDEX_FILE, json.dumps(meta, indent=2))
    return IndexSummary(
        out, "00000", n_img, n_cap, n_img, n_cap, n_th, time.perf_counter() - t0, _peak_rss_mib()
    )


def read_meta(index_dir: str | os.PathLike) -> dict:
    p = Path(index_dir) / INDEX_FILE
    if not p.is_file():
        raise InputError("not an index folder (no index.json); build one with `imagebert index build`",
                         path=index_dir)  # fmt: skip
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc})", path=p) from None
    if not isinstance(meta, dict):
        raise InputError("not an index file (the top level is not a JSON object)", path=p)
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise InputError(f"unsupported index format {meta.get('format')!r} v{meta.get('version')}", path=p)
    return meta


def check_checkpoint(meta: dict, checkpoint: str | os.PathLike) -> None:
    """Refuse a checkpoint other than the one that built the index: its embeddings would not be comparable."""
    fp = checkpoint_fingerprint(checkpoint)
    if fp != meta["checkpoint"]["fingerprint"]:
        raise InputError(
            f"checkpoint {checkpoint} is not the one this index was built with ({meta['checkpoint']['path']}, "
            f"sha256 {meta['checkpoint']['fingerprint'][:12]}...); use that checkpoint or build a new index"
        )


def add_to_index(
    index_dir: str | os.PathLike,
    checkpoint: str | os.PathLike,
    *,
    dataset: str | os.PathLike | None = None,
    split: str | None = "test",
    features: str | os.PathLike | None = None,
    captions: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    device: str = "cpu",
    precision: str | None = None,
    batch_size: int = 128,
    thumb_size: int = 256,
) -> IndexSummary:
    """Append a shard (a dataset split, a feature store, or a folder of new images extracted here with grid
    boxes); earlier shards are not touched. Uses the index's checkpoint only."""
    t0 = time.perf_counter()
    index_dir = Path(index_dir)
    meta = read_meta(index_dir)
    check_checkpoint(meta, checkpoint)
    model, collator = _load_model(checkpoint, device)
    shard = f"{len(meta['shards']):05d}"
    existing = GalleryIndex(index_dir, load_embeddings=False)
    images_dir = images
    if images is not None and dataset is None and features is None:
        features = _extract_into_index(index_dir, shard, images, meta, model, device)
    src = _source(dataset, split, features, captions)
    n_img, n_cap, n_th = _write_shard(index_dir, shard, src, model, collator, first_ordinal=existing.num_images,
                                      images_dir=images_dir, thumb_size=thumb_size, device=device,
                                      precision=precision or meta.get("precision", "fp32"), batch_size=batch_size,
                                      existing_ids=set(existing.image_ids))  # fmt: skip
    meta["shards"].append({"name": shard, "store": str(src.store_path), "images": n_img, "captions": n_cap,
                           "source": src.description, "created": time.time()})  # fmt: skip
    if meta.get("extraction") is None:
        meta["extraction"] = _extraction_settings(src.store_path)
    _atomic_write_text(index_dir / INDEX_FILE, json.dumps(meta, indent=2))
    return IndexSummary(index_dir, shard, n_img, n_cap, existing.num_images + n_img,
                        existing.num_captions + n_cap, n_th, time.perf_counter() - t0, _peak_rss_mib())  # fmt: skip


def _extract_into_index(
    index_dir: Path, shard: str, images: Any, meta: dict, model: Any, device: str
) -> Path:
    """New images -> a feature store inside the index, with the gallery's extraction settings and grid boxes."""
    from imagebert.extraction.extract import ExtractionConfig, extract

    ex = meta.get("extraction") or {}
    cfg = ExtractionConfig(backbone=ex.get("backbone", "efficientnet-lite0"), image_size=ex.get("image_size", 512),
                           pool_size=ex.get("pool_size", 4), sampling_ratio=ex.get("sampling_ratio", 2),
                           weights_path=ex.get("weights_path"), grid=ex.get("grid", 4), device=device,
                           progress=False)  # fmt: skip
    store = index_dir / "shards" / f"{shard}.features"
    report = extract(images, store, cfg)
    if report.feature_dim != model.config.visual_feature_dim:
        raise InputError(f"the backbone gives {report.feature_dim}-d features but the model expects "
                         f"{model.config.visual_feature_dim}-d", path=images)  # fmt: skip
    if report.extracted + report.skipped_existing == 0:
        raise InputError(f"no usable image ({report.rejected} rejected: {report.rejects[:3]})", path=images)
    return store


# ---------------------------------------------------------------------------------------------- reading


class GalleryIndex:
    """A built index, loaded: ids, captions, embeddings (concatenated over shards) and region access."""

    def __init__(self, path: str | os.PathLike, *, load_embeddings: bool = True) -> None:
        self.path = Path(path)
        self.meta = read_meta(self.path)
        self.images: list[dict] = []
        self.captions: list[dict] = []
        self._store_of: list[int] = []
        self._stores: list[Any] = [None] * len(self.meta["shards"])
        img_parts, cap_parts = [], []
        for s, shard in enumerate(self.meta["shards"]):
            d = self.path / "shards" / shard["name"]
            rows = _read_jsonl(d / "images.jsonl")
            self.images.extend(rows)
            self._store_of.extend([s] * len(rows))
            self.captions.extend(_read_jsonl(d / "captions.jsonl"))
            if load_embeddings:
                img_parts.append(np.load(d / "image_emb.npy"))
                cap_parts.append(np.load(d / "caption_emb.npy"))
        self.image_ids = [r["id"] for r in self.images]
        self.ordinal = {iid: i for i, iid in enumerate(self.image_ids)}
        self.caption_image = np.array([self.ordinal[c["image_id"]] for c in self.captions], dtype=np.int64)
        dim = int(self.meta["embedding_dim"])
        self.image_emb = np.concatenate(img_parts) if img_parts else np.zeros((0, dim), np.float32)
        self.caption_emb = np.concatenate(cap_parts) if cap_parts else np.zeros((0, dim), np.float32)

    @property
    def num_images(self) -> int:
        return len(self.images)

    @property
    def num_captions(self) -> int:
        return len(self.captions)

    @property
    def caption_texts(self) -> list[str]:
        return [c["text"] for c in self.captions]

    def _store(self, s: int):
        if self._stores[s] is None:
            from imagebert.data.store import FeatureStore

            self._stores[s] = FeatureStore(self.meta["shards"][s]["store"])
        return self._stores[s]

    def record(self, i: int):
        """RegionRecord of image `i` (position in the index), read from its shard's feature store."""
        return self._store(self._store_of[i])[self.image_ids[i]]

    def thumb_path(self, i: int) -> Path | None:
        t = self.images[i].get("thumb")
        return None if t is None else self.path / t
