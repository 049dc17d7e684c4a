"""Speed against peers and against the machine's limit (issue 8), side by side in one process.

Measures, interleaved (A, B, C, A, B, C, ...) so the shared machine's load hits every setting alike, medians:
- training step throughput of our `ImageBertForPreTraining` (all four tasks, and MLM+ITM only) against
  transformers' `VisualBertForPreTraining` of the same size fed the same region features, fp32 and bf16 autocast;
  our step goes through the real collator and masking, whose time is reported separately;
- hardware utilisation: analytic training FLOPs per second over a large matmul's measured FLOP/s (same dtype);
- retrieval scoring pairs/s (exhaustive) and the fast mode's pass-count speed-up;
- feature-store read samples/s against the training step's consumption.

    .venv/bin/python -m benchmarks.speed [--quick] [--batch-size 8] [--reps 3] [--out benchmarks/results/speed.md]
    .venv/bin/python -m benchmarks.speed --profile bf16   # top ops of our step (torch.profiler)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imagebert.data.types import RegionRecord

WORDS = [
    "a",
    "man",
    "woman",
    "dog",
    "cat",
    "riding",
    "walking",
    "red",
    "blue",
    "small",
    "large",
    "street",
    "park",
    "beach",
    "with",
    "on",
    "in",
    "the",
    "of",
    "near",
    "two",
    "young",
    "old",
    "girl",
    "boy",
    "standing",
    "sitting",
    "green",
    "white",
    "black",
]


@dataclass
class Sizes:
    """Model and batch sizes of one benchmark run."""

    layers: int = 12
    hidden: int = 768
    heads: int = 12
    intermediate: int = 3072
    vocab: int = 30522
    feature_dim: int = 2048
    regions: int = 100
    words: int = 20
    num_classes: int = 1600
    batch: int = 8


def tiny_sizes(batch: int = 4) -> Sizes:
    """Sizes small enough for CI (seconds)."""
    return Sizes(layers=2, hidden=64, heads=4, intermediate=128, feature_dim=32, regions=6, words=8,
                 num_classes=20, batch=batch)  # fmt: skip


# --------------------------------------------------------------------------------------------- FLOP counting
def train_step_flops(
    *,
    sizes: Sizes,
    seq_len: int,
    batch: int,
    regions: int,
    mlm_positions: int,
    moc_positions: int = 0,
    mrfr_positions: int = 0,
    mlm_head_positions: int | None = None,
    region_proj_inputs: int | None = None,
) -> dict[str, int]:
    """Analytic matmul FLOPs of one training step (forward + backward), by part.

    A matmul of an (n x k) input with a (k x m) weight costs 2nkm forward and 4nkm backward (input grad and weight
    grad): 6 * params * rows. Counted:
    - encoder: 6 * layers * (4H^2 + 2HI) * B * L, over the executed (padded) sequence length L;
    - attention scores and context: 12 * layers * B * L^2 * H (2 * 2 L^2 H forward, twice that backward);
    - region projections: 4 * (D + 5) * H * B * R (region features need no input gradient: 2 + 2, not 6);
    - pooler + ITM: 6 * (H^2 + H) * B;
    - MLM head: 6 * (H^2 + H * V) * positions it runs on (ours: masked tokens; VisualBERT: every position);
    - MOC 6 * H * C and MRFR 6 * H * D per masked region.
    Not counted: embeddings lookups, LayerNorm, GELU, softmax, dropout, losses, the optimizer (all O(params) or
    O(B*L*H), and none of them a matmul).
    """
    s = sizes
    h, i = s.hidden, s.intermediate
    rp = batch * regions if region_proj_inputs is None else region_proj_inputs
    mlm_rows = mlm_positions if mlm_head_positions is None else mlm_head_positions
    parts = {
        "encoder": 6 * s.layers * (4 * h * h + 2 * h * i) * batch * seq_len,
        "attention": 12 * s.layers * batch * seq_len * seq_len * h,
        "region_proj": 4 * (s.feature_dim + 5) * h * rp,
        "pooler_itm": 6 * (h * h + h) * batch,
        "mlm_head": 6 * (h * h + h * s.vocab) * mlm_rows,
        "moc_head": 6 * h * s.num_classes * moc_positions,
        "mrfr_head": 6 * h * s.feature_dim * mrfr_positions,
    }
    parts["total"] = sum(parts.values())
    return parts


def matmul_flops_per_s(dtype: torch.dtype, n: int = 2048, reps: int = 5, m: int | None = None,
                       k: int | None = None) -> float:  # fmt: skip
    """The machine's dense matmul rate in `dtype`: median of `reps` (m x k) @ (k x n) products (square by default)."""
    m = n if m is None else m
    k = n if k is None else k
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(k, n).to(dtype)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    return 2 * m * k * n / statistics.median(times)


# --------------------------------------------------------------------------------------------- data
def make_pairs(n: int, sizes: Sizes, seed: int = 0) -> list[tuple[RegionRecord, str]]:
    """n (RegionRecord, caption) pairs: `regions` boxes of `feature_dim` fp16 features, `words`-word captions."""
    rng = np.random.default_rng(seed)
    r = sizes.regions
    pairs = []
    for k in range(n):
        x1, y1 = rng.uniform(0, 300, r), rng.uniform(0, 300, r)
        boxes = np.stack([x1, y1, x1 + rng.uniform(10, 300, r), y1 + rng.uniform(10, 300, r)], 1)
        rec = RegionRecord(f"im{k}", rng.random((r, sizes.feature_dim), dtype=np.float32).astype(np.float16),
                           boxes.astype(np.float32), 640, 640, rng.integers(0, sizes.num_classes, r))  # fmt: skip
        pairs.append((rec, " ".join(rng.choice(WORDS, sizes.words))))
    return pairs


class BatchBuilder:
    """The real data path of a pre-training step: PairCollator, then TextMasker and mask_regions.

    Every other item gets another item's caption (ITM negative, itm_labels 0), as the trainer's 50% negatives do.
    """

    def __init__(self, sizes: Sizes) -> None:
        from imagebert.data.collate import PairCollator
        from imagebert.data.masking import MaskingConfig, TextMasker
        from imagebert.modeling import load_tokenizer

        self.tokenizer = load_tokenizer()
        self.collator = PairCollator(self.tokenizer, max_text_tokens=43, max_regions=max(sizes.regions, 1),
                                     feature_dim=sizes.feature_dim)  # fmt: skip
        self.masking = MaskingConfig()
        self.text_masker = TextMasker.from_tokenizer(self.tokenizer, self.masking)

    def __call__(self, pairs: list[tuple[RegionRecord, str]], seed: int = 0) -> tuple[dict[str, Any], float]:
        """(model inputs incl. labels, seconds spent collating + masking)."""
        from imagebert.data.masking import mask_regions

        t = time.perf_counter()
        n = len(pairs)
        itm = torch.tensor([1 - (k % 2) for k in range(n)])
        texts = [pairs[k][1] if itm[k] else pairs[(k + 1) % n][1] for k in range(n)]
        batch = self.collator([(p[0], t_) for p, t_ in zip(pairs, texts)])
        g = torch.Generator().manual_seed(seed)
        ids, mlm_labels = self.text_masker(batch["input_ids"], batch["attention_mask"], g)
        rm = mask_regions(batch["region_features"], batch["region_mask"], batch["region_class_ids"],
                          self.masking, g)  # fmt: skip
        inputs = {
            "input_ids": ids,
            "attention_mask": batch["attention_mask"],
            "region_features": rm.region_features,
            "region_locations": batch["region_locations"],
            "region_mask": batch["region_mask"],
            "mlm_labels": mlm_labels,
            "region_masked": rm.region_masked,
            "moc_labels": rm.moc_labels,
            "mrfr_targets": rm.mrfr_targets,
            "itm_labels": itm,
        }
        return inputs, time.perf_counter() - t


def peer_inputs(inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The same batch in VisualBERT's API: text then regions; MLM labels span both (-100 on regions)."""
    ids = inputs["input_ids"]
    b, r = inputs["region_mask"].shape
    labels = torch.cat([inputs["mlm_labels"], torch.full((b, r), -100, dtype=torch.long)], dim=1)
    return {
        "input_ids": ids,
        "attention_mask": inputs["attention_mask"],
        "token_type_ids": torch.zeros_like(ids),
        "visual_embeds": inputs["mrfr_targets"],  # the original (unmasked) features
        "visual_attention_mask": inputs["region_mask"],
        "visual_token_type_ids": torch.ones(b, r, dtype=torch.long),
        "labels": labels,
        "sentence_image_labels": 1 - inputs["itm_labels"],  # VisualBERT: 0 = matching
    }


# --------------------------------------------------------------------------------------------- models
def build_ours(sizes: Sizes, *, mlm_itm_only: bool = False, seed: int = 0) -> torch.nn.Module:
    from imagebert.modeling import ImageBertConfig, ImageBertForPreTraining

    torch.manual_seed(seed)
    cfg = ImageBertConfig(vocab_size=sizes.vocab, hidden_size=sizes.hidden, num_hidden_layers=sizes.layers,
                          num_attention_heads=sizes.heads, intermediate_size=sizes.intermediate,
                          visual_feature_dim=sizes.feature_dim, max_regions=max(sizes.regions, 1),
                          max_text_tokens=43, num_object_classes=sizes.num_classes,
                          task_moc=not mlm_itm_only, task_mrfr=not mlm_itm_only)  # fmt: skip
    return ImageBertForPreTraining(cfg).train()


def build_peer(sizes: Sizes, seed: int = 0) -> torch.nn.Module:
    from transformers import VisualBertConfig, VisualBertForPreTraining

    torch.manual_seed(seed)
    cfg = VisualBertConfig(vocab_size=sizes.vocab, hidden_size=sizes.hidden, num_hidden_layers=sizes.layers,
                           num_attention_heads=sizes.heads, intermediate_size=sizes.intermediate,
                           visual_embedding_dim=sizes.feature_dim)  # fmt: skip
    return VisualBertForPreTraining(cfg).train()


def _autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)


@dataclass
class Runner:
    """One setting: `step()` runs one whole training step and returns its timings and FLOPs."""

    name: str
    step: Callable[[], dict[str, float]]


def ours_runner(name: str, model: torch.nn.Module, builder: BatchBuilder, pairs: list, sizes: Sizes,
                precision: str) -> Runner:  # fmt: skip
    opt = _optimizer(model)
    state = {"seed": 0}

    def step() -> dict[str, float]:
        t0 = time.perf_counter()
        state["seed"] += 1
        inputs, collate_s = builder(pairs, seed=state["seed"])
        with _autocast(precision):
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        total = time.perf_counter() - t0
        cfg = model.config
        matched = inputs["itm_labels"] == 1
        mlm = int(((inputs["mlm_labels"] != -100) & matched[:, None]).sum())
        masked = inputs["region_masked"] & matched[:, None] & inputs["region_mask"].bool()
        moc = int((masked & (inputs["moc_labels"] >= 0)).sum()) if cfg.task_moc else 0
        mrfr = int(masked.sum()) if cfg.task_mrfr else 0
        b, t = inputs["input_ids"].shape
        r = inputs["region_features"].shape[1]
        flops = train_step_flops(sizes=sizes, seq_len=t + r + 1, batch=b, regions=r, mlm_positions=mlm,
                                 moc_positions=moc, mrfr_positions=mrfr)["total"]  # fmt: skip
        return {"step_s": total, "collate_s": collate_s, "model_s": total - collate_s, "flops": flops,
                "seq_len": t + r + 1}  # fmt: skip

    return Runner(name, step)


def peer_runner(name: str, model: torch.nn.Module, builder: BatchBuilder, pairs: list, sizes: Sizes,
                precision: str) -> Runner:  # fmt: skip
    opt = _optimizer(model)
    fixed, _ = builder(pairs, seed=12345)
    inputs = peer_inputs(fixed)

    def step() -> dict[str, float]:
        t0 = time.perf_counter()
        with _autocast(precision):
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        total = time.perf_counter() - t0
        b, t = inputs["input_ids"].shape
        r = inputs["visual_embeds"].shape[1]
        flops = train_step_flops(sizes=sizes, seq_len=t + r, batch=b, regions=r, mlm_positions=0,
                                 mlm_head_positions=b * (t + r))["total"]  # fmt: skip
        return {"step_s": total, "collate_s": 0.0, "model_s": total, "flops": flops, "seq_len": t + r}

    return Runner(name, step)


def run_interleaved(runners: list[Runner], warmup: int, reps: int) -> dict[str, dict[str, float]]:
    """Warm each runner up, then time A, B, C, A, B, C, ...; medians per runner."""
    for r in runners:
        for _ in range(warmup):
            r.step()
    samples: dict[str, list[dict[str, float]]] = {r.name: [] for r in runners}
    for _ in range(reps):
        for r in runners:
            samples[r.name].append(r.step())
    out = {}
    for name, rows in samples.items():
        out[name] = {k: float(statistics.median(row[k] for row in rows)) for k in rows[0]}
    return out


def training_comparison(
    sizes: Sizes, precisions: list[str], warmup: int = 1, reps: int = 3
) -> dict[str, Any]:
    """Ours (all tasks), ours (MLM+ITM) and VisualBERT, per precision, interleaved; plus matmul peak and FLOPs."""
    builder = BatchBuilder(sizes)
    pairs = make_pairs(sizes.batch, sizes)
    models = {
        "ours_all": build_ours(sizes),
        "ours_mlm_itm": build_ours(sizes, mlm_itm_only=True),
        "visualbert": build_peer(sizes),
    }
    result: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    for prec in precisions:
        runners = [
            ours_runner("ours_all", models["ours_all"], builder, pairs, sizes, prec),
            ours_runner("ours_mlm_itm", models["ours_mlm_itm"], builder, pairs, sizes, prec),
            peer_runner("visualbert", models["visualbert"], builder, pairs, sizes, prec),
        ]
        timings = run_interleaved(runners, warmup, reps)
        peak = matmul_flops_per_s(torch.bfloat16 if prec == "bf16" else torch.float32,
                                  n=2048 if sizes.hidden >= 256 else 256)  # fmt: skip
        # the rate this machine reaches on the step's own FFN matmul shape (B*L x H) @ (H x I)
        rows = int(sizes.batch * timings["ours_all"]["seq_len"])
        shape_rate = matmul_flops_per_s(torch.bfloat16 if prec == "bf16" else torch.float32, n=sizes.intermediate,
                                        m=rows, k=sizes.hidden)  # fmt: skip
        for t in timings.values():
            t["samples_per_s"] = sizes.batch / t["step_s"]
            t["model_samples_per_s"] = sizes.batch / t["model_s"]
            t["flops_per_s"] = t["flops"] / t["model_s"]
            t["utilisation"] = t["flops_per_s"] / peak
        result[prec] = {"matmul_flops_per_s": peak, "step_shape_matmul_flops_per_s": shape_rate,
                        "step_shape": [rows, sizes.hidden, sizes.intermediate], "settings": timings}  # fmt: skip
        print(f"[speed] {prec}: " + ", ".join(f"{k} {v['model_s']:.2f} s/step" for k, v in timings.items()),
              file=sys.stderr, flush=True)  # fmt: skip
    result["load_after"] = os.getloadavg()[0]
    result["params_m"] = {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, m in models.items()}
    return result


# --------------------------------------------------------------------------------------------- retrieval, data
def retrieval_speed(sizes: Sizes, reps: int = 2, batch: int = 8) -> dict[str, Any]:
    """Cross-encoder pairs/s (exhaustive mode) and the fast mode's pass-count speed-up on Flickr30k 1k."""
    from benchmarks.bench_retrieval import fast_passes_bound

    if sizes.hidden == 768 and sizes.regions == 100:
        from benchmarks.bench_retrieval import bert_base_pairs_per_second

        rates = bert_base_pairs_per_second(["fp32", "bf16"], batch, reps)
    else:
        rates = _pairs_per_second(sizes, ["fp32", "bf16"], batch, reps)
    captions, images = 5000, 1000
    speedups = {k: captions * images / fast_passes_bound(captions, images, k) for k in (16, 64, 128)}
    return {"pairs_per_s": rates, "fast_speedup_flickr1k": speedups}


def _pairs_per_second(sizes: Sizes, precisions: list[str], batch: int, reps: int) -> dict[str, float]:
    from imagebert.modeling import ImageBertConfig, ImageBertForRetrieval

    cfg = ImageBertConfig(vocab_size=sizes.vocab, hidden_size=sizes.hidden, num_hidden_layers=sizes.layers,
                          num_attention_heads=sizes.heads, intermediate_size=sizes.intermediate,
                          visual_feature_dim=sizes.feature_dim, max_regions=sizes.regions)  # fmt: skip
    model = ImageBertForRetrieval(cfg).eval()
    b, t = batch, sizes.words + 2
    inputs = {"input_ids": torch.randint(1000, sizes.vocab, (b, t)), "attention_mask": torch.ones(b, t),
              "region_features": torch.randn(b, sizes.regions, sizes.feature_dim),
              "region_locations": torch.rand(b, sizes.regions, 5),
              "region_mask": torch.ones(b, sizes.regions)}  # fmt: skip
    out = {}
    for prec in precisions:
        with torch.no_grad(), _autocast(prec):
            model(**inputs)
            t0 = time.perf_counter()
            for _ in range(reps):
                model(**inputs)
            out[prec] = b * reps / (time.perf_counter() - t0)
    return out


def store_read_speed(sizes: Sizes, n: int = 100, reads: int = 300) -> dict[str, float]:
    """Random-order reads (decode to RegionRecord) from a temporary store of n records, samples/s."""
    from imagebert.data.store import FeatureStore, FeatureStoreWriter

    pairs = make_pairs(n, sizes, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store"
        with FeatureStoreWriter(path, feature_dim=sizes.feature_dim, dtype="float16") as w:
            for rec, _ in pairs:
                w.add(rec)
        store = FeatureStore(path)
        ids = [rec.image_id for rec, _ in pairs]
        order = np.random.default_rng(0).integers(0, n, reads)
        store[ids[0]]
        t = time.perf_counter()
        for k in order:
            rec = store[ids[k]]
            rec.features.astype(np.float32)  # what the collator does with it
        dt = time.perf_counter() - t
    return {"records": n, "reads": reads, "samples_per_s": reads / dt}


# --------------------------------------------------------------------------------------------- profile
OP_GROUPS = {
    "matmul (mm, addmm, bmm)": (
        "aten::mm",
        "aten::addmm",
        "aten::bmm",
        "aten::baddbmm",
        "aten::_weight_int8pack_mm",
    ),
    "dtype casts and copies": (
        "aten::copy_",
        "aten::_to_copy",
        "aten::to",
        "aten::clone",
        "aten::contiguous",
    ),
    "optimizer (fused AdamW)": ("aten::_fused_adamw_",),
    "dropout RNG": ("aten::bernoulli_",),
    "LayerNorm fwd+bwd": ("aten::native_layer_norm", "aten::native_layer_norm_backward"),
    "GELU fwd+bwd": ("aten::gelu", "aten::gelu_backward"),
    "softmax fwd+bwd": (
        "aten::_softmax",
        "aten::_softmax_backward_data",
        "aten::_log_softmax",
        "aten::_log_softmax_backward_data",
    ),
    "embedding grad": ("aten::embedding_dense_backward", "aten::fill_", "aten::index_add_"),
}


def profile_ours(sizes: Sizes, precision: str = "bf16", steps: int = 2, row_limit: int = 20) -> str:
    """torch.profiler table (self CPU time) of `steps` of our all-task step after one warm-up step, preceded by
    the share of self time per op group (matmul vs casts vs optimizer vs element-wise)."""
    from torch.profiler import ProfilerActivity, profile

    builder = BatchBuilder(sizes)
    pairs = make_pairs(sizes.batch, sizes)
    runner = ours_runner("ours_all", build_ours(sizes), builder, pairs, sizes, precision)
    runner.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            runner.step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    lines = [
        f"{precision}, {steps} steps, self CPU total {total / 1e6:.2f} s",
        "",
        "| op group | share |",
        "|---|---|",
    ]
    grouped = 0.0
    for group, names in OP_GROUPS.items():
        t = sum(e.self_cpu_time_total for e in events if e.key in names)
        grouped += t
        lines.append(f"| {group} | {100 * t / total:.1f}% |")
    lines.append(
        f"| everything else (element-wise mul/add/sum, masks, Python) | {100 * (total - grouped) / total:.1f}% |"
    )
    return "\n".join(lines) + "\n\n" + events.table(sort_by="self_cpu_time_total", row_limit=row_limit)


# --------------------------------------------------------------------------------------------- report
def run_all(sizes: Sizes, *, reps: int = 3, warmup: int = 1, precisions: list[str] | None = None,
            retrieval_reps: int = 2, store_records: int = 100) -> dict[str, Any]:  # fmt: skip
    precisions = precisions or ["fp32", "bf16"]
    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "sizes": asdict(sizes),
        "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs",
        "load_start": os.getloadavg(),
    }
    report["training"] = training_comparison(sizes, precisions, warmup, reps)
    report["retrieval"] = retrieval_speed(sizes, reps=retrieval_reps)
    report["store"] = store_read_speed(sizes, n=store_records)
    report["load_end"] = os.getloadavg()
    report["wall_s"] = time.perf_counter() - t0
    return report


def to_markdown(report: dict[str, Any]) -> str:
    s = report["sizes"]
    tr = report["training"]
    lines = [
        f"Sizes: {s['layers']} layers, hidden {s['hidden']}, FFN {s['intermediate']}, {s['regions']} regions x "
        f"{s['feature_dim']}-d, {s['words']}-word captions, batch {s['batch']}. Machine: {report['machine']}. "
        f"Load average (1 min) at start {report['load_start'][0]:.2f}, at end {report['load_end'][0]:.2f}. "
        f"Whole run {report['wall_s']:.0f} s.",
        "",
        "| precision | setting | seq len | step samples/s | model-only samples/s | collate+mask ms | "
        "vs VisualBERT (model-only) | GFLOP/step | GFLOP/s | matmul GFLOP/s | utilisation |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for prec in ("fp32", "bf16"):
        if prec not in tr:
            continue
        peak = tr[prec]["matmul_flops_per_s"]
        st = tr[prec]["settings"]
        peer = st["visualbert"]["model_samples_per_s"]
        for name, t in st.items():
            lines.append(
                f"| {prec} | {name} | {t['seq_len']:.0f} | {t['samples_per_s']:.3f} | "
                f"{t['model_samples_per_s']:.3f} | {1000 * t['collate_s']:.1f} | "
                f"{t['model_samples_per_s'] / peer:.2f}x | {t['flops'] / 1e9:.1f} | {t['flops_per_s'] / 1e9:.1f} | "
                f"{peak / 1e9:.1f} | {100 * t['utilisation']:.1f}% |"
            )
    for prec in ("fp32", "bf16"):
        if prec in tr and "step_shape" in tr[prec]:
            m, k, n = tr[prec]["step_shape"]
            lines.append(
                f"\n{prec}: matmul rate on the step's own FFN shape ({m} x {k}) @ ({k} x {n}): "
                f"{tr[prec]['step_shape_matmul_flops_per_s'] / 1e9:.1f} GFLOP/s "
                f"(square 2048 matmul: {tr[prec]['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s)."
            )
    rt = report["retrieval"]
    lines += ["", "| retrieval (cross-encoder, no_grad) | pairs/s |", "|---|---|"]
    for prec, r in rt["pairs_per_s"].items():
        lines.append(f"| exhaustive, {prec} | {r:.2f} |")
    for k, v in rt["fast_speedup_flickr1k"].items():
        lines.append(f"| fast mode k={k}, Flickr30k 1k: pass-count speed-up (lower bound) | {v:.1f}x |")
    st = report["store"]
    best = max(t["samples_per_s"] for p in ("fp32", "bf16") if p in tr for t in tr[p]["settings"].values())
    lines += [
        "",
        "| data | samples/s |",
        "|---|---|",
        f"| feature store random reads ({st['records']} records, fp16 -> fp32) | {st['samples_per_s']:.0f} |",
        f"| fastest training step's consumption | {best:.3f} |",
        f"| store headroom | {st['samples_per_s'] / best:.0f}x |",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds), for checking the code runs")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3, help="timed steps per setting (interleaved)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--profile", choices=["fp32", "bf16"], default=None,
                    help="print the top ops (torch.profiler) of our all-task step in this precision and exit")  # fmt: skip
    ap.add_argument("--profile-steps", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the markdown table here")
    ap.add_argument("--json", default=None, help="write the raw report (JSON) here")
    args = ap.parse_args()
    sizes = tiny_sizes(args.batch_size) if args.quick else Sizes(batch=args.batch_size)
    if args.profile:
        print(profile_ours(sizes, args.profile, steps=args.profile_steps))
        return 0
    report = run_all(sizes, reps=args.reps, warmup=args.warmup, retrieval_reps=1 if args.quick else 2)
    md = to_markdown(report)
    print(md)
    if args.out:
        Path(args.out).write_text(md)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
