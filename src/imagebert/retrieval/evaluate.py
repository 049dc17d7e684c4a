"""Retrieval evaluation: protocols (Flickr30k 1k, COCO 5k, COCO 1k folds), exhaustive and fast modes, outputs.

`evaluate_gallery` does the work for a model and a gallery; `evaluate_checkpoint` adds loading a checkpoint and a
dataset split and writing results.json / results.md. Both run unchanged under `torchrun` (each rank scores a
share of the blocks; rank 0 writes the outputs).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imagebert.config_utils import ConfigError
from imagebert.retrieval.engine import score_matrix
from imagebert.retrieval.metrics import DEFAULT_KS, RecallResult, fold_indices, mean_results, recall_at_k
from imagebert.retrieval.paper import markdown_table
from imagebert.retrieval.rerank import candidate_mask, rerank_recall
from imagebert.retrieval.scorers import (
    Gallery,
    ModelPairScorer,
    embed_gallery,
    first_stage_scores,
    scoring_precision,
)
from imagebert.runtime.atomic import atomic_write_text

log = logging.getLogger(__name__)

PROTOCOLS = ("flickr1k", "coco5k", "coco1k", "all")


@dataclass
class EvalOptions:
    """How to score. `ks_fast` are the re-ranking depths of fast mode (one evaluation per k)."""

    mode: str = "exhaustive"  # exhaustive | fast | both
    ks_fast: list[int] = field(default_factory=lambda: [128])
    fold_size: int = 1000  # COCO 1k folds (5 of them)
    num_folds: int = 5
    recall_ks: tuple[int, ...] = DEFAULT_KS
    device: str = "cpu"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    batch_size: int = 128
    # 250 x 50 = 12,500 pairs: minutes per block on a CPU, seconds on a GPU, so resuming loses little
    block_captions: int = 250
    block_images: int = 50
    # fp32 | bf16 (bf16-resident encoder weights when precision is bf16, score head fp32) | int8 (the encoder
    # layers' Linear modules int8 on a CPU, fp32 activations; imagebert.runtime.quantize) | int8-static (the
    # layer stack int8 with calibrated activation scales, compiled; imagebert.runtime.int8_static)
    weights: str = "fp32"
    # int8-static only: dynamic (one compiled graph for every sequence length) | static (one per length)
    int8_shapes: str = "dynamic"
    compile: str = "off"  # off | on | auto (auto: on for CUDA runs of at least COMPILE_AUTO_MIN_PAIRS pairs)
    attention: str = "sdpa"  # sdpa | eager | auto (eager on a CPU in bf16), imagebert.runtime.attention
    progress: bool = True  # a bar on a terminal, a line every 30 s otherwise, and a summary line
    cache_dir: str | None = None  # resumable score matrices live here
    fingerprint: dict = field(default_factory=dict)  # what identifies the model (checkpoint, weights mtime)
    # fast mode on a model whose contrastive projections were never trained is refused unless this is set
    allow_untrained_itc: bool = False


def _gallery_hash(g: Gallery) -> str:
    h = hashlib.sha1()
    for t in g.texts:
        h.update(t.encode("utf-8") + b"\0")
    h.update(np.asarray(g.caption_image, dtype=np.int64).tobytes())
    for i in g.image_ids:
        h.update(i.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


def protocol_units(
    protocol: str, gallery: Gallery, opts: EvalOptions
) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Which (caption rows, image columns) sets each reported protocol averages over."""
    all_caps = np.arange(gallery.num_captions)
    all_imgs = np.arange(gallery.num_images)
    whole = [(all_caps, all_imgs)]
    if protocol == "flickr1k" or protocol == "coco5k":
        return {protocol: whole}
    folds = lambda: fold_indices(gallery.num_images, gallery.caption_image, opts.fold_size, opts.num_folds)  # noqa: E731
    if protocol == "coco1k":
        return {"coco1k": folds()}
    if protocol == "all":
        if gallery.num_images >= opts.fold_size * opts.num_folds:
            return {"coco5k": whole, "coco1k": folds()}
        return {"flickr1k": whole}
    raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")


def _cache(opts: EvalOptions, name: str) -> str | None:
    return None if opts.cache_dir is None else str(Path(opts.cache_dir) / name)


COMPILE_AUTO_MIN_PAIRS = 1_000_000  # below this, compiling (minutes) does not pay back on a GPU either


def _scorer(
    model: Any, collator: Any, g: Gallery, opts: EvalOptions, pairs: int, bar: Any
) -> ModelPairScorer:
    compile_setting = opts.compile
    if compile_setting == "auto" and pairs < COMPILE_AUTO_MIN_PAIRS:
        compile_setting = "off"
    return ModelPairScorer(model, collator, g, device=opts.device, precision=opts.precision,
                           batch_size=opts.batch_size, weights=opts.weights, compile=compile_setting,
                           int8_shapes=opts.int8_shapes, on_batch=bar.update)  # fmt: skip


def _numerics(opts: EvalOptions) -> dict:
    """Settings that change the scores, for the cache fingerprint (absent at their defaults, so caches written
    before these settings existed stay valid)."""
    out = {}
    if opts.weights != "fp32":
        out["resident_weights"] = opts.weights
    if opts.weights == "int8-static" and opts.int8_shapes != "dynamic":
        out["int8_shapes"] = opts.int8_shapes
    if opts.compile != "off":
        out["compile"] = opts.compile
    if opts.attention != "sdpa":
        out["attention"] = opts.attention
    return out


def _progress(opts: EvalOptions, desc: str, unit: str = "pairs") -> Any:
    from imagebert.runtime.progress import Progress

    return Progress(desc, unit=unit, enabled=None if opts.progress else False)


def _exhaustive(
    model: Any, collator: Any, g: Gallery, opts: EvalOptions, unit: str
) -> tuple[np.ndarray, dict]:
    bar = _progress(opts, f"evaluate {unit} exhaustive")
    scorer = _scorer(model, collator, g, opts, g.num_captions * g.num_images, bar)
    fp = {**opts.fingerprint, **_numerics(opts), "gallery": _gallery_hash(g), "mode": "exhaustive",
          "precision": opts.precision,
          "batch_size": opts.batch_size}  # fmt: skip
    t0 = time.perf_counter()
    with bar:
        matrix, stats = score_matrix(
            scorer, g.num_captions, g.num_images, cache_dir=_cache(opts, f"{unit}-exhaustive"), fingerprint=fp,
            block_captions=opts.block_captions, block_images=opts.block_images, on_pending=bar.set_total,
        )  # fmt: skip
    info = {
        "mode": "exhaustive",
        "cross_encoder_pairs": g.num_captions * g.num_images,
        "pairs_scored_this_run": stats.pairs_scored_all_ranks,
        "blocks_from_cache": stats.blocks_cached,
        "seconds": time.perf_counter() - t0,
    }
    return matrix, info


def _fast(
    model: Any,
    collator: Any,
    g: Gallery,
    opts: EvalOptions,
    unit: str,
    k: int,
    first: np.ndarray | None = None,
) -> tuple[RecallResult, dict, np.ndarray]:
    t0 = time.perf_counter()
    if first is None:
        with _progress(opts, f"evaluate {unit} first stage", unit="items") as emb_bar:
            emb_bar.set_total(g.num_captions + g.num_images)
            t_emb, i_emb = embed_gallery(model, collator, g, device=opts.device, precision=opts.precision,
                                         batch_size=max(opts.batch_size, 64), progress=emb_bar,
                                         allow_untrained=opts.allow_untrained_itc)  # fmt: skip
        first = first_stage_scores(t_emb, i_emb)
    t_first = time.perf_counter() - t0
    k_ir, k_tr = min(k, g.num_images), min(k, g.num_captions)
    need, _, _ = candidate_mask(first, k_ir, k_tr)
    bar = _progress(opts, f"evaluate {unit} fast k={k}")
    scorer = _scorer(model, collator, g, opts, int(need.sum()), bar)
    fp = {**opts.fingerprint, **_numerics(opts), "gallery": _gallery_hash(g), "mode": "fast", "k": [k_ir, k_tr],
          "need": hashlib.sha1(np.packbits(need).tobytes()).hexdigest()[:16], "precision": opts.precision,
          "batch_size": opts.batch_size}  # fmt: skip
    with bar:
        second, stats = score_matrix(
            scorer, g.num_captions, g.num_images, need=need, cache_dir=_cache(opts, f"{unit}-fast-k{k}"),
            fingerprint=fp, block_captions=opts.block_captions, block_images=opts.block_images,
            on_pending=bar.set_total,
        )  # fmt: skip
    result = rerank_recall(first, second, g.caption_image, need, opts.recall_ks)
    info = {
        "mode": "fast",
        "k": k,
        "cross_encoder_pairs": int(need.sum()),
        "pairs_scored_this_run": stats.pairs_scored_all_ranks,
        "blocks_from_cache": stats.blocks_cached,
        "first_stage_seconds": t_first,
        "seconds": time.perf_counter() - t0,
    }
    return result, info, first


def evaluate_gallery(
    model: Any, collator: Any, gallery: Gallery, protocol: str, opts: EvalOptions
) -> dict[str, Any]:
    """Results per protocol and mode: {protocol: {label: RecallResult.to_dict() + timing}}.

    Labels: "exhaustive", "fast k=K". COCO "all" scores the 5k matrix once and reads the five 1k folds off it in
    exhaustive mode; fast mode ranks each fold on its own (its first stage sees only the fold's gallery). The
    model runs with `opts.attention`'s kernel for the call and gets its own back afterwards.
    """
    from imagebert.runtime.attention import set_attention
    from imagebert.runtime.precision import resolve_precision

    device = next(model.parameters()).device
    before = getattr(model.config, "_attn_implementation", "sdpa")
    precision = scoring_precision(opts.weights, opts.precision)  # the scorer's own rule
    impl = set_attention(model, opts.attention, device, resolve_precision(precision, device))
    try:
        return _evaluate_gallery(model, collator, gallery, protocol, replace(opts, attention=impl))
    finally:
        if model.config._attn_implementation != before:
            model.set_attn_implementation(before)


def _evaluate_gallery(
    model: Any, collator: Any, gallery: Gallery, protocol: str, opts: EvalOptions
) -> dict[str, Any]:
    units = protocol_units(protocol, gallery, opts)
    modes = ["exhaustive", "fast"] if opts.mode == "both" else [opts.mode]
    if any(m not in ("exhaustive", "fast") for m in modes):
        raise ConfigError(f"mode must be exhaustive, fast or both, got {opts.mode!r}")
    out: dict[str, Any] = {}
    whole_matrix: np.ndarray | None = None
    for name, parts in units.items():
        out[name] = {}
        if "exhaustive" in modes:
            results, infos = [], []
            for u, (caps, imgs) in enumerate(parts):
                if whole_matrix is not None and len(parts) > 1:
                    sub = np.asarray(whole_matrix[caps][:, imgs])
                    info = {"mode": "exhaustive", "cross_encoder_pairs": 0, "seconds": 0.0,
                            "note": "read off the full-gallery matrix"}  # fmt: skip
                else:
                    g = gallery if len(parts) == 1 else gallery.subset(caps, imgs)
                    sub, info = _exhaustive(model, collator, g, opts, f"{name}-{u}")
                    if len(parts) == 1:
                        whole_matrix = sub
                ci = gallery.caption_image[caps] - (imgs[0] if len(parts) > 1 else 0)
                results.append(recall_at_k(sub, ci, opts.recall_ks))
                infos.append(info)
            res = results[0] if len(results) == 1 else mean_results(results)
            out[name]["exhaustive"] = {**res.to_dict(), **_sum_infos(infos)}
        if "fast" in modes:
            for k in opts.ks_fast:
                results, infos = [], []
                for u, (caps, imgs) in enumerate(parts):
                    g = gallery if len(parts) == 1 else gallery.subset(caps, imgs)
                    res, info, _ = _fast(model, collator, g, opts, f"{name}-{u}", k)
                    results.append(res)
                    infos.append(info)
                res = results[0] if len(results) == 1 else mean_results(results)
                out[name][f"fast k={k}"] = {**res.to_dict(), **_sum_infos(infos)}
    return out


def _sum_infos(infos: Sequence[dict]) -> dict:
    merged = dict(infos[0])
    for key in ("cross_encoder_pairs", "pairs_scored_this_run", "seconds", "first_stage_seconds"):
        if key in merged:
            merged[key] = sum(i.get(key, 0) for i in infos)
    return merged


# --------------------------------------------------------------------------- checkpoint + dataset level


def gallery_from_dataset(ds: Any) -> Gallery:
    """A split as a gallery. Images keep the order of their first caption in the caption file (the Karpathy order,
    which the COCO 1k folds follow), not the sorted `ds.image_ids`."""
    order: dict[str, int] = {}
    for c in ds.captions:
        if c.image_id not in order:
            order[c.image_id] = len(order)
    image_ids = list(order)
    return Gallery(
        texts=[c.text for c in ds.captions],
        caption_image=np.array([order[c.image_id] for c in ds.captions], dtype=np.int64),
        image_ids=image_ids,
        get_record=lambda i: ds.record(image_ids[i]),
    )


def load_retrieval_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """(ImageBertForRetrieval, ImageBertProcessor) from a pre-training or fine-tuning checkpoint folder (the
    processor saved with it; one built from its config and tokenizer files for older checkpoints)."""
    from imagebert.modeling import ImageBertForRetrieval
    from imagebert.training.checkpoint import load_processor, verify_checkpoint

    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint}: not a checkpoint folder (no config.json)")
    verify_checkpoint(
        checkpoint, trainer_files=False
    )  # a truncated model.safetensors: one line, not a traceback
    model = ImageBertForRetrieval.from_pretrained(str(checkpoint)).to(device)
    model.eval()
    return model, load_processor(checkpoint, model.config)


def checkpoint_setting(checkpoint: str | Path) -> str:
    """'fine-tuned' for checkpoints written by `imagebert finetune` (they carry retrieval.json), else 'zero-shot'."""
    return "fine-tuned" if (Path(checkpoint) / "retrieval.json").is_file() else "zero-shot"


def _fingerprint(checkpoint: Path) -> dict:
    weights = checkpoint / "model.safetensors"
    stat = weights.stat() if weights.is_file() else None
    return {
        "checkpoint": str(checkpoint.resolve()),
        "weights": None if stat is None else [stat.st_size, stat.st_mtime_ns],
    }


def evaluate_checkpoint(
    checkpoint: str | Path,
    dataset: str | Path | Any,
    *,
    split: str = "test",
    protocol: str = "all",
    out_dir: str | Path | None = None,
    options: EvalOptions | None = None,
    setting: str | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a dataset split; writes results.json and results.md to out_dir (rank 0)."""
    from imagebert.runtime.distributed import init_distributed, shutdown

    opts = options or EvalOptions()
    info = init_distributed(opts.device)
    try:
        opts.device = str(info.device)
        checkpoint = Path(checkpoint)
        if out_dir is not None and opts.cache_dir is None:
            opts.cache_dir = str(Path(out_dir) / "score_cache")
        opts.fingerprint = {**_fingerprint(checkpoint), **opts.fingerprint}
        model, collator = load_retrieval_model(checkpoint, info.device)
        if isinstance(dataset, str | os.PathLike):
            from imagebert.data import dataset as data_mod

            ds = data_mod.PairDataset(data_mod.load_dataset_spec(dataset), split=split)
        else:
            ds = dataset
        gallery = gallery_from_dataset(ds)
        if gallery.num_captions == 0:
            raise ConfigError(f"split '{split}' has no captions")
        results = evaluate_gallery(model, collator, gallery, protocol, opts)
        setting = setting or checkpoint_setting(checkpoint)
        report = {
            "checkpoint": str(checkpoint),
            "dataset": str(dataset) if isinstance(dataset, str | os.PathLike) else type(dataset).__name__,
            "split": split,
            "setting": setting,
            "num_captions": gallery.num_captions,
            "num_images": gallery.num_images,
            "precision": opts.precision,
            "device": opts.device,
            "world_size": info.world_size,
            "rank": info.rank,
            "tie_rule": "pessimistic: a wrong candidate scoring equal to the best correct one ranks ahead of it",
            "results": results,
        }
        if out_dir is not None and info.is_main:
            write_report(report, out_dir)
        return report
    finally:
        shutdown(info)


def report_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Retrieval results ({report['setting']})",
        "",
        f"Checkpoint `{report['checkpoint']}`, split `{report['split']}` ({report['num_captions']} captions, "
        f"{report['num_images']} images), precision {report['precision']}, {report['world_size']} process(es).",
        "IR = image retrieval (caption -> image), TR = text retrieval (image -> caption). Ties count against us.",
        "",
    ]
    for protocol, rows in report["results"].items():
        lines.append(f"## {protocol}")
        lines.append("")
        ours = {f"ours, {label}": res for label, res in rows.items()}
        lines.append(markdown_table(protocol, report["setting"], ours))
        cost = ["| mode | cross-encoder passes | wall time (s) |", "|---|---|---|"]
        for label, res in rows.items():
            cost.append(
                f"| {label} | {res.get('cross_encoder_pairs', 0):,} | {res.get('seconds', 0.0):.1f} |"
            )
        lines.extend(cost)
        lines.append("")
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: str | Path) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("results.json", json.dumps(report, indent=2)),
        ("results.md", report_markdown(report)),
    ):
        atomic_write_text(out / name, text, fsync=False)
