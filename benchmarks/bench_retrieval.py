"""Retrieval evaluation speed: exhaustive pairs/s, fast mode's speed-up and recall lost, projections to the paper's
test sets at BERT-base size.

Run: .venv/bin/python benchmarks/bench_retrieval.py [--quick] [--out benchmarks/out/retrieval.json]

Part 1 (BERT-base size, random weights: speed does not depend on the weights): cross-encoder pairs/s with 100
regions of 2048-d and a ~20-word caption, fp32 and bf16 autocast; projected wall time of exhaustive and fast
evaluation on Flickr30k 1k (5,000 x 1,000 = 5M pairs) and COCO 5k (25,000 x 5,000 = 125M pairs).
Part 2 (small model, measured end to end): fine-tune a small ImageBERT briefly with BCE + ITC on a synthetic
learnable gallery, then evaluate it exhaustively and in fast mode at several k: recall, cross-encoder passes and
wall time of each, so the speed-up and the recall lost are measured, not assumed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from imagebert.data.types import Caption, RegionRecord

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "brown", "orange"]
OBJECTS = ["dog", "car", "boat", "horse", "chair", "bird", "train", "kite"]
PLACES = ["beach", "street", "field", "kitchen", "park", "river"]
TEMPLATES = ["a {c} {o} on the {p}", "the {c} {o} near a {p}", "a photo of a {c} {o} at the {p}",
             "one {c} {o} in the {p}", "there is a {c} {o} by the {p}"]  # fmt: skip


def synthetic(num_images: int, dim: int, seed: int, prefix: str) -> tuple[list[RegionRecord], list[Caption]]:
    """Image k shows (colour, object, place) concept k: three regions carry those vectors, the rest noise."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).normal(size=(len(COLOURS) + len(OBJECTS) + len(PLACES), dim))
    records, captions = [], []
    for k in range(num_images):
        concept = int(rng.integers(0, len(COLOURS) * len(OBJECTS) * len(PLACES)))
        c, o, p = concept % 8, (concept // 8) % 8, concept // 64
        n = int(rng.integers(6, 12))
        feats = rng.normal(scale=0.5, size=(n, dim))
        feats[0] += basis[c]
        feats[1] += basis[8 + o]
        feats[2] += basis[16 + p]
        boxes = np.array([[3 * i, 2 * i, 3 * i + 40, 2 * i + 50] for i in range(n)], dtype=np.float32)
        iid = f"{prefix}{k:05d}"
        records.append(RegionRecord(iid, feats.astype(np.float32), boxes, 200, 160))
        for j, t in enumerate(TEMPLATES):
            captions.append(
                Caption(iid, t.format(c=COLOURS[c], o=OBJECTS[o], p=PLACES[p]), f"{iid}#{j}", prefix)
            )
    return records, captions


def bert_base_pairs_per_second(precisions: list[str], batch: int, reps: int) -> dict[str, float]:
    """BERT-base pairs/s through `ModelPairScorer` (what `imagebert evaluate` runs: length-sorted batches, fp32
    score head), one batch of `batch` pairs per repetition, settings interleaved, process CPU time."""
    from benchmarks import speed

    settings = {p: {"precision": p} for p in precisions}
    res = speed.scoring_comparison(speed.Sizes(), pairs=batch, batch_size=batch, settings=settings, warmup=1,
                                   min_reps=reps, max_reps=reps)  # fmt: skip
    return {p: res["settings"][p]["pairs_per_cpu_s"] for p in precisions}


def fast_passes_bound(num_captions: int, num_images: int, k: int) -> int:
    """Upper bound of re-scored pairs: each caption's top k images plus each image's top k captions."""
    return min(
        num_captions * num_images, num_captions * min(k, num_images) + num_images * min(k, num_captions)
    )


def projections(rates: dict[str, float]) -> list[dict]:
    rows = []
    for name, c, i, ks in (
        ("Flickr30k 1k", 5000, 1000, (16, 64, 128)),
        ("COCO 5k", 25000, 5000, (64, 128, 256)),
    ):
        pairs = c * i
        for prec, rate in rates.items():
            row = {
                "test set": name,
                "precision": prec,
                "pairs": pairs,
                "exhaustive_hours": pairs / rate / 3600,
            }
            for k in ks:
                row[f"fast_k{k}_hours_upper"] = fast_passes_bound(c, i, k) / rate / 3600
                row[f"fast_k{k}_passes_upper"] = fast_passes_bound(c, i, k)
            rows.append(row)
    return rows


def small_model_fast_vs_exhaustive(num_images: int, ks: list[int], steps: int, workdir: Path) -> dict:
    from imagebert.modeling import ImageBertConfig, ImageBertForPreTraining, load_tokenizer
    from imagebert.retrieval.evaluate import EvalOptions, evaluate_gallery, load_retrieval_model
    from imagebert.retrieval.scorers import Gallery
    from imagebert.tasks.retrieval import FinetuneConfig, LossConfig, NegativesConfig, run_finetuning
    from imagebert.training.pairs import InMemoryPairDataset
    from imagebert.training.trainer import TrainerConfig

    dim = 32
    cfg = ImageBertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=256, visual_feature_dim=dim, max_regions=16, max_text_tokens=24,
                          itc_dim=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    torch.manual_seed(0)
    init = workdir / "init"
    ImageBertForPreTraining(cfg).save_pretrained(init)
    load_tokenizer().save_pretrained(init)
    train = InMemoryPairDataset(*reversed(synthetic(600, dim, 1, "train")))
    val = InMemoryPairDataset(*reversed(synthetic(60, dim, 2, "val")))
    ft = FinetuneConfig(
        init_checkpoint=str(init),
        loss=LossConfig(bce=1.0, itc=1.0),
        negatives=NegativesConfig(num_negatives=3, pool_size=16, hard=False),
        training=TrainerConfig(
            batch_size=32,
            learning_rate=1e-3,
            steps=steps,
            checkpoint_every=0,
            log_every=50,
            tensorboard=False,
            progress_bar=False,
            device="cpu",
        ),  # fmt: skip
    )
    ft.validation.num_queries = 100
    t0 = time.perf_counter()
    best = run_finetuning(ft, workdir / "ft", train_dataset=train, val_dataset=val)
    train_s = time.perf_counter() - t0
    model, collator = load_retrieval_model(best)
    records, captions = synthetic(num_images, dim, 3, "test")
    gallery = Gallery.from_records(records, [(c.image_id, c.text) for c in captions])
    opts = EvalOptions(
        mode="both", ks_fast=ks, precision="bf16", batch_size=256, block_captions=500, block_images=50
    )
    res = evaluate_gallery(model, collator, gallery, "flickr1k", opts)["flickr1k"]
    return {"train_seconds": train_s, "train_steps": steps, "num_images": num_images,
            "num_captions": len(captions), "results": res}  # fmt: skip


def to_markdown(report: dict) -> str:
    lines = ["### Cross-encoder throughput at BERT-base size (100 regions x 2048-d, 22 text tokens)", "",
             "| precision | pairs/s | vs fp32 |", "|---|---|---|"]  # fmt: skip
    rates = report["bert_base_pairs_per_s"]
    for prec, r in rates.items():
        lines.append(f"| {prec} | {r:.2f} | {r / rates['fp32']:.2f}x |")
    lines += ["", "### Projected wall time at BERT-base size on this machine (one process)", "",
              "| test set | precision | exhaustive pairs | exhaustive | fast (upper bound on passes) |",
              "|---|---|---|---|---|"]  # fmt: skip
    for row in report["projections"]:
        fast = ", ".join(
            f"k={k.split('_k')[1].split('_')[0]}: {row[k]:,.0f} h"
            for k in row
            if k.startswith("fast_k") and k.endswith("hours_upper")
        )
        lines.append(f"| {row['test set']} | {row['precision']} | {row['pairs']:,} | "
                     f"{row['exhaustive_hours']:,.0f} h ({row['exhaustive_hours'] / 24:,.1f} days) | {fast} |")  # fmt: skip
    s = report["small_model"]
    lines += ["", f"### Fast vs exhaustive, measured (small model, {s['num_images']} images x "
              f"{s['num_captions']} captions, bf16)", "",
              "| mode | cross-encoder passes | wall s | pairs/s | speed-up | IR R@1/5/10 | TR R@1/5/10 | RSUM | RSUM lost |",
              "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    ex = s["results"]["exhaustive"]
    for label, r in s["results"].items():
        ir, tr = r["image_retrieval"], r["text_retrieval"]
        lines.append(
            f"| {label} | {r['cross_encoder_pairs']:,} | {r['seconds']:.1f} | "
            f"{r['cross_encoder_pairs'] / r['seconds']:,.0f} | {ex['seconds'] / r['seconds']:.1f}x | "
            f"{ir['R@1']:.1f} / {ir['R@5']:.1f} / {ir['R@10']:.1f} | {tr['R@1']:.1f} / {tr['R@5']:.1f} / "
            f"{tr['R@10']:.1f} | {r['rsum']:.1f} | {ex['rsum'] - r['rsum']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, smaller gallery")
    ap.add_argument("--out", default="benchmarks/out/retrieval.json")
    ap.add_argument(
        "--results", default=None, help="also write the results page (e.g. benchmarks/results/retrieval.md)"
    )
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    reps = 1 if args.quick else 3
    report: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads",
        "load_average_at_start": os.getloadavg(),
    }
    from benchmarks.timing import one_thread

    one_thread()  # one intra-op thread and the tuned allocator: the measuring convention (benchmarks/timing.py)
    report["bert_base_pairs_per_s"] = bert_base_pairs_per_second(["fp32", "bf16"], batch=128, reps=reps)
    report["projections"] = projections(report["bert_base_pairs_per_s"])
    print(json.dumps(report["bert_base_pairs_per_s"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        report["small_model"] = small_model_fast_vs_exhaustive(
            num_images=100 if args.quick else 200, ks=[5, 10, 20, 50], steps=200 if args.quick else 500,
            workdir=Path(tmp),
        )  # fmt: skip
    report["load_average_at_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    md = to_markdown(report)
    Path(args.out).with_suffix(".md").write_text(md)
    if args.results:
        from benchmarks.timing import command_line, machine_line

        page = ["## Retrieval evaluation speed (exhaustive vs fast mode)", "",
                command_line("benchmarks.bench_retrieval").replace("-m benchmarks.bench_retrieval",
                                                                   "benchmarks/bench_retrieval.py"), "",
                machine_line(), "", "Written by `benchmarks/bench_retrieval.py` (do not edit by hand). Pairs/s in "
                "process CPU time through `ModelPairScorer` at batch 128; projections = pairs / that rate; the "
                "fast-mode rows are upper bounds on passes. The end-to-end fast-mode measurement on the demo's "
                "trained checkpoint is in the fast-mode section (benchmarks/bench_fast_mode.py).", "", md]  # fmt: skip
        Path(args.results).write_text("\n".join(page), encoding="utf-8")
    print(md)


if __name__ == "__main__":
    main()
