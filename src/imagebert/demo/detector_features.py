"""A second built-in corpus whose region features look like a detector's: the demo scenes written as an LXMERT /
bottom-up-attention TSV with 2048-d non-negative features of realistic scale and a strong component shared by
every region.

Features are not rendered from pixels: each region's vector is drawn from its annotation (class, colour, size)
as `relu(shared + class pattern + colour pattern + size pattern + noise)`, the way pooled ReLU features of a
Faster R-CNN carry a large common offset with the content in a sparse part on top. Each image also gets a
whole-image region (class `background`) that mixes its objects weakly, as detectors return context boxes. This
is the feature type the field ships (non-negative, 2048-d, norms in the tens, a strong shared mean), so a recipe
that works on it and on the demo's EfficientNet features does not depend on which it gets.
"""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path

import numpy as np

from imagebert.data.formats import LXMERT_FIELDS

FEATURE_DIM = 2048
COLOR_NAMES = ("red", "green", "blue", "yellow", "purple", "black")
SIZE_NAMES = ("small", "large")


def _b64(arr: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode("ascii")


def _patterns(rng: np.random.Generator, n: int, dim: int, density: float, scale: float) -> np.ndarray:
    """n sparse patterns: `density` of the dimensions carry N(0, scale), the rest 0."""
    active = rng.random((n, dim)) < density
    return np.where(active, rng.normal(0.0, scale, (n, dim)), 0.0)


def write_detector_tsv(
    boxes_json: str | Path,
    out_tsv: str | Path,
    *,
    dim: int = FEATURE_DIM,
    seed: int = 0,
    shared_scale: float = 2.0,
    signal_scale: float = 1.5,
    noise_scale: float = 0.8,
) -> Path:
    """Write one LXMERT-layout TSV row per image of a demo COCO-style box file (`boxes_demo.json`).

    objects_id are the box file's category ids - 1 (0-based, as the VG-1600 ids of LXMERT files), and the
    whole-image region takes the next id (`background`); attrs_id is the colour index."""
    coco = json.loads(Path(boxes_json).read_text(encoding="utf-8"))
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    num_classes = len(categories)
    rng = np.random.default_rng(seed)
    shared = shared_scale * np.abs(rng.normal(0.0, 1.0, dim))
    class_pat = _patterns(rng, num_classes + 1, dim, 0.1, 2.0 * signal_scale)
    color_pat = _patterns(rng, len(COLOR_NAMES), dim, 0.1, 1.5 * signal_scale)
    size_pat = _patterns(rng, len(SIZE_NAMES), dim, 0.05, 1.0 * signal_scale)
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    out = Path(out_tsv)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        for image in sorted(coco["images"], key=lambda im: im["id"]):
            w, h = int(image["width"]), int(image["height"])
            anns = by_image.get(int(image["id"]), [])
            boxes, feats, classes, colors = [], [], [], []
            mix = np.zeros(dim)
            for ann in anns:
                x, y, bw, bh = ann["bbox"]
                cls = int(ann["category_id"]) - 1
                color = COLOR_NAMES.index(ann["attributes"]["color"])
                size = SIZE_NAMES.index(ann["attributes"]["size"])
                content = class_pat[cls] + color_pat[color] + size_pat[size]
                mix += content
                feats.append(shared + content + rng.normal(0.0, noise_scale, dim))
                boxes.append([x, y, x + bw, y + bh])
                classes.append(cls)
                colors.append(color)
            feats.append(shared + 0.3 * mix + class_pat[num_classes] + rng.normal(0.0, noise_scale, dim))
            boxes.append([0.0, 0.0, float(w), float(h)])
            classes.append(num_classes)
            colors.append(0)
            n = len(boxes)
            row = {
                "img_id": Path(image["file_name"]).stem,
                "img_h": h,
                "img_w": w,
                "objects_id": _b64(np.asarray(classes, dtype=np.int64)),
                "objects_conf": _b64(np.full(n, 0.9, dtype=np.float32)),
                "attrs_id": _b64(np.asarray(colors, dtype=np.int64)),
                "attrs_conf": _b64(np.full(n, 0.8, dtype=np.float32)),
                "num_boxes": n,
                "boxes": _b64(np.asarray(boxes, dtype=np.float32)),
                "features": _b64(np.maximum(np.asarray(feats), 0.0).astype(np.float32)),
            }
            writer.writerow([row[f] for f in LXMERT_FIELDS])
    tmp.replace(out)
    return out


def detector_like_pairs(
    topics: list[str], num_images: int = 60, dim: int = 64, seed: int = 0, shuffle_captions: bool = False
):
    """A small in-memory corpus of the same kind, for tests and quick experiments: each image shows two of
    `topics` (4 regions, non-negative features with a shared offset ~15x the content part), its 3 captions name
    both. `shuffle_captions` breaks every caption-image link (nothing left to match)."""
    from imagebert.data.types import Caption, RegionRecord
    from imagebert.training.pairs import InMemoryPairDataset

    rng = np.random.default_rng(seed)
    patterns = _patterns(rng, len(topics), dim, 0.2, 3.0)
    shared = 20.0 * np.abs(rng.normal(0, 1, dim))
    records, captions = [], []
    for i in range(num_images):
        t = rng.choice(len(topics), size=2, replace=False)
        feats = np.stack([shared + patterns[t[k % 2]] + rng.normal(0, 1, dim) for k in range(4)])
        x1, y1 = rng.uniform(0, 50, 4), rng.uniform(0, 50, 4)
        boxes = np.stack([x1, y1, x1 + 20, y1 + 20], 1).astype(np.float32)
        classes = np.array([t[k % 2] for k in range(4)], dtype=np.int64)
        iid = f"img{i:03d}"
        records.append(RegionRecord(iid, np.maximum(feats, 0).astype(np.float32), boxes, 120, 110, classes))
        for c in range(3):
            a, b = (t[0], t[1]) if c % 2 == 0 else (t[1], t[0])
            captions.append(Caption(iid, f"a {topics[a]} with a {topics[b]}", f"{iid}#{c}"))
    if shuffle_captions:
        texts = [c.text for c in captions]
        rng.shuffle(texts)
        captions = [Caption(c.image_id, text, c.caption_id) for c, text in zip(captions, texts, strict=True)]
    return InMemoryPairDataset(captions, records)
