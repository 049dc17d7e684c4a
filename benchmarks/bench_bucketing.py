"""Length bucketing in pre-training: the padding it removes from real batches, and what that buys a step.

Batches come from the trainer's own path: `PairPool.lengths` (caption words + region count, read from record
headers), `ShardedBatchSampler` with and without those lengths, and `PretrainTask.build_batch` (ITM negatives,
collation, masking). Negatives matter: a swapped-in random caption or image has a random length, so what bucketing
saves is measured on the batches as built, not on the sorted items. Three parts:

- padding: token slots (text + regions + [CLS]/[SEP]) that are padding, over the first epoch's batches, random vs
  bucketed, for the dataset as stored and with 100 regions per image (the paper's fixed count: generated
  features, the dataset's captions), each with the demo recipe's ITM (half the negatives drawn inside the batch)
  and the paper's (random negatives only);
- step: a pre-training step (the five demo tasks or the paper's four, AdamW, clipping) on the first batches of
  each list, random and bucketed interleaved, one intra-op thread, process CPU time and wall time;
- lengths pass: the start-up cost of the lengths, record headers (`FeatureStore.num_boxes`) against full reads,
  on the dataset's store and on a generated store of 100 x 2048 fp16 records.

    .venv/bin/python -m benchmarks.bench_bucketing --out benchmarks/results/bucketing.md
    .venv/bin/python -m benchmarks.bench_bucketing --quick      # a tiny generated dataset: checks the code runs
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.timing import (
    command_line,
    fmt_spread,
    machine_line,
    one_thread,
    paired_ratio,
    run_interleaved,
    write_outputs,
)

# the demo recipe's ITM (configs/pretrain/demo_cpu.yaml) and the paper's (configs/pretrain/paper_two_stage.yaml)
ITM_SETTINGS = {
    "demo": {"negative_ratio": 0.5, "caption_swap_fraction": 0.5, "itc_negative_fraction": 0.5, "itc": True},
    "paper": {
        "negative_ratio": 0.5,
        "caption_swap_fraction": 0.5,
        "itc_negative_fraction": 0.0,
        "itc": False,
    },
}


def _log(msg: str) -> None:
    print(f"[bucketing] {msg}", file=sys.stderr, flush=True)


def with_regions(ds: Any, regions: int, seed: int = 0) -> Any:
    """The dataset's captions over generated records of `regions` boxes each (features N(0, 0.1), the image's
    first box repeated): what the same captions cost with a fixed region count."""
    from imagebert.data.types import RegionRecord
    from imagebert.training.pairs import InMemoryPairDataset

    rng = np.random.default_rng(seed)
    records = {}
    for image_id in ds.image_ids:
        r = ds.record(image_id)
        feats = (0.1 * rng.standard_normal((regions, r.feature_dim))).astype(np.float32)
        boxes = np.tile(r.boxes[:1], (regions, 1))
        records[image_id] = RegionRecord(
            image_id, feats, boxes, r.image_width, r.image_height, None, None, None
        )
    return InMemoryPairDataset(ds.captions, records)


def build_task(pool: Any, tokenizer: Any, model_config: Any, itm_name: str) -> Any:
    from imagebert.data.masking import MaskingConfig
    from imagebert.modeling.tasks import PretrainingTasks
    from imagebert.tasks.pretraining import ItmConfig, PretrainTask

    s = dict(ITM_SETTINGS[itm_name])
    tasks = PretrainingTasks(itc=s.pop("itc"))
    return PretrainTask(pool, tokenizer, model_config, MaskingConfig(), ItmConfig(**s), tasks=tasks)


def batch_lists(pool: Any, batch_size: int, seed: int) -> dict[str, list[list[int]]]:
    """Epoch 0's batches, plain shuffling and bucketed, as the Trainer's sampler cuts them."""
    from imagebert.training.sampler import ShardedBatchSampler

    lengths = pool.lengths(10**6)
    return {
        "random": ShardedBatchSampler(len(pool), batch_size, seed=seed).global_batches(0),
        "bucketed": ShardedBatchSampler(len(pool), batch_size, seed=seed, lengths=lengths).global_batches(0),
    }


def padding_of(batches: list[dict[str, Any]]) -> dict[str, float]:
    """Padding slots / all slots over built batches, and their mean padded length. Slots: the text mask (with
    [CLS]), the region mask, and the image [SEP] and last [SEP] of each row."""
    real = slots = 0
    lengths = []
    for batch in batches:
        text, regions = batch["attention_mask"], batch["region_mask"]
        slots += text.numel() + regions.numel() + 2 * text.shape[0]
        real += int(text.sum()) + int(regions.sum()) + 2 * text.shape[0]
        lengths.append(text.shape[1] + regions.shape[1] + 2)
    return {"share": 1.0 - real / slots, "mean_length": float(np.mean(lengths)), "batches": len(batches)}


def padding_share(task: Any, pool: Any, batches: list[list[int]], seed: int) -> dict[str, float]:
    """`padding_of` the batches as the task builds them (negatives, collation)."""
    gen = torch.Generator().manual_seed(seed)
    return padding_of([task.build_batch([pool[i] for i in b], gen) for b in batches])


def build_model(model_config_overrides: dict[str, Any], itm_name: str) -> Any:
    from imagebert.modeling import ImageBertForPreTraining
    from imagebert.modeling.tasks import PretrainingTasks

    model = ImageBertForPreTraining.init_from_bert(None, **model_config_overrides)
    model.tasks = PretrainingTasks(itc=ITM_SETTINGS[itm_name]["itc"])
    return model.train()


def step_row(task: Any, pool: Any, lists: dict[str, list[list[int]]], model_overrides: dict[str, Any],
             itm_name: str, steps: int, min_reps: int, max_reps: int, seed: int) -> dict[str, Any]:  # fmt: skip
    """`steps` training steps on the first batches of each list (the same count of pairs both ways), interleaved.
    Batches are built once, before timing: the step is what is timed."""
    torch.manual_seed(seed)
    model = build_model(model_overrides, itm_name)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    gen = torch.Generator().manual_seed(seed)
    built = {name: [task.build_batch([pool[i] for i in b], gen) for b in batches[:steps]]
             for name, batches in lists.items()}  # fmt: skip

    def run(name: str):
        def go() -> None:
            for batch in built[name]:
                loss, _ = task.compute_loss(model, batch)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)

        return go

    series = run_interleaved({n: run(n) for n in built}, warmup=1, min_reps=min_reps, max_reps=max_reps,
                             log=lambda m: _log(f"steps {m}"))  # fmt: skip
    return {
        "steps": {k: v.summary() for k, v in series.items()},
        # of the timed batches themselves
        **{f"{name}_sample_padding": padding_of(batches)["share"] for name, batches in built.items()},
        "random_over_bucketed": paired_ratio(series["random"], series["bucketed"]),
        "random_over_bucketed_wall": paired_ratio(series["random"], series["bucketed"], "wall"),
    }


def lengths_pass(store: Any, image_ids: list[str], reps: int = 3) -> dict[str, float]:
    """Seconds per image to count the boxes: the record header, and a full read (decode + checksum)."""
    out = {}
    for name, fn in (("header", store.num_boxes), ("full_read", lambda i: store[i].num_boxes)):
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            for i in image_ids:
                fn(i)
            best = min(best, time.perf_counter() - t0)
        out[name] = best / len(image_ids)
    return out


def generated_store(folder: Path, images: int, regions: int, dim: int) -> Any:
    from imagebert.data import FeatureStore, FeatureStoreWriter, RegionRecord

    rng = np.random.default_rng(0)
    boxes = np.tile(np.array([0, 0, 10, 10], np.float32), (regions, 1))
    with FeatureStoreWriter(folder, feature_dim=dim, dtype="float16") as w:
        for i in range(images):
            w.add(
                RegionRecord(f"g{i}", rng.standard_normal((regions, dim)).astype(np.float32), boxes, 64, 64)
            )
    return FeatureStore(folder)


def quick_dataset(folder: Path) -> Path:
    """A tiny on-disk dataset (Karpathy JSON + store + YAML) with varying captions and box counts."""
    import json

    from imagebert.data import FeatureStoreWriter, RegionRecord

    rng = np.random.default_rng(0)
    words = ["a", "red", "dog", "runs", "near", "the", "small", "blue", "car", "in", "big", "green", "park"]
    images = []
    with FeatureStoreWriter(folder / "feats", feature_dim=32, dtype="float16") as w:
        for i in range(24):
            n = int(rng.integers(2, 12))
            boxes = np.tile(np.array([0, 0, 5, 5], np.float32), (n, 1))
            w.add(RegionRecord(str(i), rng.standard_normal((n, 32)).astype(np.float32), boxes, 10, 10))
            sents = [" ".join(rng.choice(words, int(rng.integers(3, 16)))) for _ in range(2)]
            images.append({"filename": f"{i}.jpg", "imgid": i, "split": "train",
                           "sentences": [{"raw": s, "tokens": s.split()} for s in sents]})  # fmt: skip
    (folder / "dataset_flickr30k.json").write_text(json.dumps({"images": images}), encoding="utf-8")
    (folder / "ds.yaml").write_text("feature_store: feats\ncaptions:\n  - path: dataset_flickr30k.json\n")
    return folder / "ds.yaml"


def measure(dataset: str, *, split: str, batch_size: int, steps: int, min_reps: int, max_reps: int,
            fixed_regions: int, store_images: int, store_dim: int, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    from imagebert.data.dataset import PairDataset, load_dataset_spec
    from imagebert.modeling import ImageBertConfig, default_bert_path, load_tokenizer
    from imagebert.training.pairs import PairPool

    ds = PairDataset(load_dataset_spec(dataset), split)
    feature_dim = ds.store.feature_dim
    tokenizer = load_tokenizer(default_bert_path())
    scenarios = {"as stored": ds, f"{fixed_regions} regions each": with_regions(ds, fixed_regions, seed)}
    report: dict[str, Any] = {"dataset": dataset, "split": split, "pairs": len(ds), "images": len(ds.image_ids),
                              "batch_size": batch_size, "feature_dim": feature_dim, "steps_per_rep": steps,
                              "padding": [], "steps": []}  # fmt: skip
    step_itm = {"as stored": "demo", f"{fixed_regions} regions each": "paper"}
    for scen, data in scenarios.items():
        pool = PairPool([data])
        lists = batch_lists(pool, batch_size, seed)
        max_regions = max(fixed_regions, max(data.record(i).num_boxes for i in data.image_ids))
        cfg_kw = {"visual_feature_dim": feature_dim, "max_regions": max_regions, "max_text_tokens": 43,
                  "num_object_classes": 8}  # fmt: skip
        model_config = ImageBertConfig(**cfg_kw)
        for itm_name in ITM_SETTINGS:
            task = build_task(pool, tokenizer, model_config, itm_name)
            row = {"scenario": scen, "itm": itm_name}
            for name, batches in lists.items():
                row[name] = padding_share(task, pool, batches, seed)
            _log(f"padding {scen} / {itm_name}: random {row['random']['share']:.3f}, "
                 f"bucketed {row['bucketed']['share']:.3f}")  # fmt: skip
            report["padding"].append(row)
        itm_name = step_itm[scen]
        task = build_task(pool, tokenizer, model_config, itm_name)
        row = step_row(task, pool, lists, cfg_kw, itm_name, steps, min_reps, max_reps, seed)
        row.update({"scenario": scen, "itm": itm_name})
        report["steps"].append(row)
    report["lengths_pass"] = {"dataset store": lengths_pass(ds.store, ds.image_ids)}
    with tempfile.TemporaryDirectory() as tmp:
        store = generated_store(Path(tmp) / "s", store_images, fixed_regions, store_dim)
        report["lengths_pass"][f"generated {fixed_regions} x {store_dim} fp16"] = lengths_pass(
            store, store.ids()
        )
        store.close()
    return report


def to_markdown(report: dict[str, Any], argv: list[str]) -> str:
    lines = [
        "## Length bucketing in pre-training: padding removed from real batches, and the step it buys",
        "",
        command_line("benchmarks.bench_bucketing", argv),
        "",
        machine_line(),
        "",
        "Written by `benchmarks/bench_bucketing.py` (do not edit by hand). Batches are the trainer's: "
        "`ShardedBatchSampler` (plain, or bucketed by `PairPool.lengths`) then `PretrainTask.build_batch` (ITM "
        "negatives, collation, masking). Padding = padded slots / all slots (text + regions + the two [SEP]s) "
        "over epoch 0. ITM: `demo` = half the negatives drawn inside the batch by ITC similarity (the demo "
        "recipe), `paper` = random negatives from the whole pool (the paper's recipe). "
        f"Dataset `{report['dataset']}` split `{report['split']}`: {report['pairs']} pairs, {report['images']} "
        f"images, batch {report['batch_size']}; the fixed-count scenario keeps its captions over generated "
        "records.",
        "",
        "| regions | ITM | padding, random | padding, bucketed | mean padded length, random | same, bucketed |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["padding"]:
        r, b = row["random"], row["bucketed"]
        lines.append(f"| {row['scenario']} | {row['itm']} | {100 * r['share']:.1f}% | {100 * b['share']:.1f}% | "
                     f"{r['mean_length']:.1f} | {b['mean_length']:.1f} |")  # fmt: skip
    lines += [
        "",
        "Training steps (demo model: the shipped MiniLM text side, 6 layers, hidden 384; fp32, AdamW, clipping "
        "1.0), the first batches of each list, interleaved; CPU = process CPU time, one intra-op thread. The "
        "ratio is random's time over bucketed's per round: above 1 means bucketing is faster.",
        "",
        "| regions | ITM | steps | padding of these batches, random / bucketed | random CPU s | spread | "
        "bucketed CPU s | spread | random / bucketed (CPU) | same (wall) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["steps"]:
        r, b = row["steps"]["random"], row["steps"]["bucketed"]
        q, qw = row["random_over_bucketed"], row["random_over_bucketed_wall"]
        lines.append(
            f"| {row['scenario']} | {row['itm']} | {report['steps_per_rep']} x {r['reps']} reps | "
            f"{100 * row['random_sample_padding']:.1f}% / "
            f"{100 * row['bucketed_sample_padding']:.1f}% | {r['cpu_s']:.2f} | {fmt_spread(r['cpu_spread'])} | "
            f"{b['cpu_s']:.2f} | {fmt_spread(b['cpu_spread'])} | {q['median']:.3f}x ({fmt_spread(q['spread'])}) | "
            f"{qw['median']:.3f}x |"
        )
    lines += ["", "Start-up cost of the lengths (best of 3 passes, warm page cache):", "",
              "| store | header (`num_boxes`), us per image | full read, us per image | full / header |",
              "|---|---|---|---|"]  # fmt: skip
    for name, t in report["lengths_pass"].items():
        lines.append(f"| {name} | {1e6 * t['header']:.1f} | {1e6 * t['full_read']:.1f} | "
                     f"{t['full_read'] / t['header']:.1f}x |")  # fmt: skip
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="demo_out/dataset.yaml", help="dataset YAML (default: make demo's)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6, help="training steps per timed repetition and list")
    ap.add_argument("--fixed-regions", type=int, default=100)
    ap.add_argument("--store-images", type=int, default=500, help="records in the generated store")
    ap.add_argument("--store-dim", type=int, default=2048)
    ap.add_argument("--min-reps", type=int, default=3)
    ap.add_argument("--max-reps", type=int, default=5)
    ap.add_argument(
        "--quick", action="store_true", help="a tiny generated dataset, small sizes: checks the code runs"
    )
    ap.add_argument("--out", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    one_thread()
    with tempfile.TemporaryDirectory() as tmp:
        dataset = str(quick_dataset(Path(tmp))) if args.quick else args.dataset
        kw = {"batch_size": 4, "steps": 1, "min_reps": 1, "max_reps": 1, "fixed_regions": 12, "store_images": 8,
              "store_dim": 32} if args.quick else {  # fmt: skip
            "batch_size": args.batch_size, "steps": args.steps, "min_reps": args.min_reps,
            "max_reps": args.max_reps, "fixed_regions": args.fixed_regions, "store_images": args.store_images,
            "store_dim": args.store_dim,
        }  # fmt: skip
        report = measure(dataset, split=args.split, **kw)
    write_outputs(to_markdown(report, argv), report, args.out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
