"""GPU check (issue 14 item 4): BERT-base pre-training step and retrieval scoring in bf16 on one CUDA card.

Reports training samples/s, scoring pairs/s (through `ModelPairScorer`, what `imagebert evaluate` runs), MFU
against the card's dense bf16 peak (a table of known cards, else "unknown"), and the exhaustive Flickr30k 1k
(5,000 x 1,000 pairs) and COCO 5k (25,000 x 5,000 pairs) wall-time projections. Writes benchmarks/results/gpu.md.

    bash benchmarks/gpu_check.sh                      # on a CUDA machine (< 5 minutes)
    .venv/bin/python -m benchmarks.gpu_check --device cpu --tiny --out /tmp/gpu.md   # smoke mode, seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s. Matched by substring of
# torch.cuda.get_device_name(), first match wins (so the more specific names come first).
KNOWN_PEAKS_TFLOPS: list[tuple[str, float]] = [
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 6000 Ada", 364.0),
    ("A6000", 155.0),
]

FLICKR1K_PAIRS = 5_000 * 1_000
COCO5K_PAIRS = 25_000 * 5_000


def card_peak(name: str) -> float | None:
    """Dense bf16 peak FLOP/s of a card by its name, None when unknown."""
    for key, tflops in KNOWN_PEAKS_TFLOPS:
        if key in name:
            return tflops * 1e12
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, steps: int) -> list[float]:  # noqa: ANN001
    out = []
    for _ in range(steps):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t)
    return out


def training_check(sizes: Any, device: torch.device, steps: int, warmup: int, compile_model: bool) -> dict:
    from benchmarks import speed

    builder = speed.BatchBuilder(sizes)
    pairs = speed.make_pairs(sizes.batch, sizes)
    inputs, _ = builder(pairs, seed=1)
    model = speed.build_ours(sizes).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    inputs = {k: v.to(device) for k, v in inputs.items()}
    forward = torch.compile(model) if compile_model else model

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = forward(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    times = _time(step, device, steps)
    cpu = {k: v.cpu() for k, v in inputs.items()}
    matched = cpu["itm_labels"] == 1
    mlm = int(((cpu["mlm_labels"] != -100) & matched[:, None]).sum())
    masked = cpu["region_masked"] & matched[:, None] & cpu["region_mask"].bool()
    b, t = cpu["input_ids"].shape
    r = cpu["region_features"].shape[1]
    flops = speed.train_step_flops(sizes=sizes, seq_len=t + r + 1, batch=b, regions=r, mlm_positions=mlm,
                                   moc_positions=int((masked & (cpu["moc_labels"] >= 0)).sum()),
                                   mrfr_positions=int(masked.sum()))["total"]  # fmt: skip
    med = statistics.median(times)
    return {"batch": b, "seq_len": t + r + 1, "step_s": med, "spread": (max(times) - min(times)) / med,
            "samples_per_s": b / med, "flops": flops, "flops_per_s": flops / med, "steps": steps}  # fmt: skip


def scoring_check(sizes: Any, device: torch.device, pairs: int, batch: int, reps: int) -> dict:
    from benchmarks import speed
    from imagebert.data.collate import PairCollator
    from imagebert.modeling import load_tokenizer
    from imagebert.retrieval.scorers import ModelPairScorer

    per_image = 32
    gallery = speed.scoring_gallery(sizes, max(1, -(-pairs // per_image)), per_image)
    collator = PairCollator(load_tokenizer(), max_text_tokens=43, max_regions=max(sizes.regions, 1),
                            feature_dim=sizes.feature_dim, truncate_regions=True)  # fmt: skip
    model = speed.build_retrieval(sizes).to(device)
    scorer = ModelPairScorer(model, collator, gallery, device=device, precision="bf16", weights="bf16",
                             batch_size=batch)  # fmt: skip
    cap = np.repeat(np.arange(gallery.num_captions), gallery.num_images)[:pairs]
    img = np.tile(np.arange(gallery.num_images), gallery.num_captions)[:pairs]
    scorer.score_pairs(cap, img)  # warm-up
    times = _time(lambda: scorer.score_pairs(cap, img), device, reps)
    med = statistics.median(times)
    seq = sizes.words + 2 + sizes.regions + 1
    fwd = speed.train_step_flops(sizes=sizes, seq_len=seq, batch=1, regions=sizes.regions, mlm_positions=0)
    per_pair = (fwd["encoder"] + fwd["attention"]) // 3 + fwd["region_proj"] // 2
    rate = len(cap) / med
    return {"pairs": len(cap), "batch": batch, "seconds": med, "spread": (max(times) - min(times)) / med,
            "pairs_per_s": rate, "flops_per_pair": per_pair, "flops_per_s": per_pair * rate,
            "flickr1k_exhaustive_s": FLICKR1K_PAIRS / rate, "coco5k_exhaustive_s": COCO5K_PAIRS / rate}  # fmt: skip


def _hours(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else (f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h")


def to_markdown(report: dict, argv: list[str]) -> str:
    from benchmarks.timing import command_line

    tr, sc = report["training"], report["scoring"]
    peak = report["peak_flops_per_s"]

    def mfu(x: float) -> str:
        return "unknown (card not in the table)" if peak is None else f"{100 * x / peak:.1f}%"

    s = report["sizes"]
    cmd = command_line("benchmarks.gpu_check", argv).replace(".venv/bin/python -m benchmarks.gpu_check",
                                                             "bash benchmarks/gpu_check.sh")  # fmt: skip
    lines = [
        "# GPU check: BERT-base pre-training step and retrieval scoring in bf16",
        "",
        cmd,
        "",
        f"Machine: {report['device_name']} ({report['device']}), torch {torch.__version__}"
        + ("" if peak is None else f", dense bf16 peak {peak / 1e12:.0f} TFLOP/s (data sheet)"),
        "",
        "Written by `benchmarks/gpu_check.py` (do not edit by hand)."
        + (
            " SMOKE MODE (--tiny): tiny sizes, the figures check the code, not the card."
            if report["tiny"]
            else ""
        ),
        "",
        f"Sizes: {s['layers']} layers, hidden {s['hidden']}, {s['regions']} regions x {s['feature_dim']}-d, "
        f"{s['words']}-word captions. Training: all four tasks (MLM, MOC, MRFR, ITM), bf16 autocast, fused AdamW, "
        f"batch {tr['batch']}{', torch.compile' if report['compile'] else ', eager'}. Scoring: `ModelPairScorer`, "
        f"bf16-resident weights, fp32 score head, batch {sc['batch']}.",
        "",
        "| check | throughput | spread | achieved TFLOP/s | MFU |",
        "|---|---|---|---|---|",
        f"| pre-training step (median of {tr['steps']}) | {tr['samples_per_s']:.1f} samples/s | "
        f"{100 * tr['spread']:.1f}% | {tr['flops_per_s'] / 1e12:.2f} | {mfu(tr['flops_per_s'])} |",
        f"| retrieval scoring ({sc['pairs']} pairs) | {sc['pairs_per_s']:.0f} pairs/s | {100 * sc['spread']:.1f}% | "
        f"{sc['flops_per_s'] / 1e12:.2f} | {mfu(sc['flops_per_s'])} |",
        "",
        "| exhaustive evaluation, one card (projected from the pairs/s above) | wall time |",
        "|---|---|",
        f"| Flickr30k 1k (5,000 x 1,000 = 5M pairs) | {_hours(sc['flickr1k_exhaustive_s'])} |",
        f"| COCO 5k (25,000 x 5,000 = 125M pairs) | {_hours(sc['coco5k_exhaustive_s'])} |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks import speed

    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (smoke mode, runs on a CPU in seconds)")
    ap.add_argument("--batch-size", type=int, default=64, help="training batch")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--score-pairs", type=int, default=4096)
    ap.add_argument("--score-batch", type=int, default=512)
    ap.add_argument("--score-reps", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="torch.compile the training step's model")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "gpu.md"))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (use --device cpu --tiny for the smoke mode)", file=sys.stderr)
        return 2
    if args.tiny:
        sizes = speed.tiny_sizes(batch=min(args.batch_size, 4))
        args.steps, args.warmup = min(args.steps, 2), min(args.warmup, 1)
        args.score_pairs, args.score_batch, args.score_reps = (
            min(args.score_pairs, 16),
            min(args.score_batch, 8),
            1,
        )
    else:
        sizes = speed.Sizes(batch=args.batch_size)
    torch.manual_seed(0)
    report = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "tiny": args.tiny,
        "compile": args.compile,
        "sizes": speed.asdict(sizes),
    }
    report["peak_flops_per_s"] = card_peak(report["device_name"]) if device.type == "cuda" else None
    report["training"] = training_check(sizes, device, args.steps, args.warmup, args.compile)
    report["scoring"] = scoring_check(sizes, device, args.score_pairs, args.score_batch, args.score_reps)
    page = to_markdown(report, argv)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(page, encoding="utf-8")
    print(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
