"""bf16 against fp32 on this CPU: whether bf16 pays here, or is emulated and costs many times fp32.

oneDNN has bf16 kernels from AVX-512 up (AMX and AVX512-BF16 fastest); on an AVX2-only CPU torch still runs bf16
but emulates it. `imagebert.runtime.precision` warns there and the demo's `auto` precisions pick fp32; this page
is the measurement behind both. Two rows, each fp32 and bf16 interleaved with one intra-op thread, process CPU
time and wall time: a matmul at the demo model's FFN shape, and the like-for-like training step of
`benchmarks/speed.py` (MLM on the masked tokens + ITM, clip 1.0, fused AdamW) at the demo model's sizes.

    .venv/bin/python -m benchmarks.bench_bf16_cpu --out benchmarks/results/bf16_cpu.md
    .venv/bin/python -m benchmarks.bench_bf16_cpu --quick      # tiny sizes: checks the code runs
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

import torch

from benchmarks import speed
from benchmarks.timing import (
    command_line,
    cpu_model,
    fmt_spread,
    machine_line,
    one_thread,
    paired_ratio,
    run_interleaved,
    write_outputs,
)
from imagebert.runtime.precision import cpu_runs_bf16_natively

# the demo model (MiniLM-L6-H384 text side, EfficientNet-Lite0 1280-d regions) at the demo's pre-training batch
DEMO_SIZES = speed.Sizes(layers=6, hidden=384, heads=12, intermediate=1536, feature_dim=1280, regions=8, words=12,
                         batch=32)  # fmt: skip


def matmul_row(rows: int, sizes: speed.Sizes, repeat: int, min_reps: int, max_reps: int) -> dict[str, Any]:
    """`rows` x hidden times hidden x intermediate, `repeat` products per timed call, fp32 and bf16 tensors."""
    a, b = torch.randn(rows, sizes.hidden), torch.randn(sizes.hidden, sizes.intermediate)
    a16, b16 = a.bfloat16(), b.bfloat16()
    steps = {
        "fp32": lambda: [a @ b for _ in range(repeat)],
        "bf16": lambda: [a16 @ b16 for _ in range(repeat)],
    }
    series = run_interleaved(steps, warmup=1, min_reps=min_reps, max_reps=max_reps, log=_log("matmul"))
    flop = 2.0 * rows * sizes.hidden * sizes.intermediate * repeat
    return {
        "what": f"matmul {rows} x {sizes.hidden} x {sizes.intermediate}, {repeat} per call",
        "steps": {k: v.summary() for k, v in series.items()},
        "gflops": {k: flop / v.cpu_s / 1e9 for k, v in series.items()},
        "bf16_over_fp32": paired_ratio(series["bf16"], series["fp32"]),
        "bf16_over_fp32_wall": paired_ratio(series["bf16"], series["fp32"], "wall"),
    }


def training_row(sizes: speed.Sizes, min_reps: int, max_reps: int) -> dict[str, Any]:
    """The like-for-like step of benchmarks/speed.py in fp32 and in bf16 autocast, from the same weights."""
    inputs, _ = speed.BatchBuilder(sizes)(speed.make_pairs(sizes.batch, sizes), seed=1)
    models = {p: speed.build_ours(sizes, mlm_itm_only=True) for p in ("fp32", "bf16")}
    models["bf16"].load_state_dict(models["fp32"].state_dict())
    opts = {p: speed._optimizer(m) for p, m in models.items()}

    def step(p: str):
        return lambda: speed._train_step(models[p], opts[p], lambda: models[p](**inputs).loss, p)

    series = run_interleaved({p: step(p) for p in models}, warmup=2, min_reps=min_reps, max_reps=max_reps,
                             log=_log("training"))  # fmt: skip
    return {
        "what": f"training step (MLM+ITM), batch {sizes.batch}",
        "steps": {k: v.summary() for k, v in series.items()},
        "bf16_over_fp32": paired_ratio(series["bf16"], series["fp32"]),
        "bf16_over_fp32_wall": paired_ratio(series["bf16"], series["fp32"], "wall"),
    }


def _log(part: str):
    return lambda m: print(f"[bf16_cpu] {part} {m}", file=sys.stderr, flush=True)


def measure(sizes: speed.Sizes, *, min_reps: int, max_reps: int, matmul_repeat: int = 20) -> dict[str, Any]:
    rows = sizes.batch * (sizes.regions + sizes.words + 3)  # the step's token positions
    return {
        "sizes": dataclasses.asdict(sizes),
        "cpu": cpu_model(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_kernels": cpu_runs_bf16_natively(),
        "rows": [
            matmul_row(rows, sizes, matmul_repeat, min_reps, max_reps),
            training_row(sizes, min_reps, max_reps),
        ],
    }


def to_markdown(report: dict[str, Any], argv: list[str]) -> str:
    s = report["sizes"]
    verdict = (
        "oneDNN has bf16 kernels for it, so the bf16 defaults apply"
        if report["bf16_kernels"]
        else "oneDNN has no bf16 kernels for it: bf16 is emulated, so `auto` means fp32 here and asking for bf16 warns"
    )
    lines = [
        "## bf16 against fp32 on this CPU",
        "",
        command_line("benchmarks.bench_bf16_cpu", argv),
        "",
        machine_line(),
        "",
        f"This CPU (named in the Machine line): {verdict}.",
        "",
        "Written by `benchmarks/bench_bf16_cpu.py` (do not edit by hand). One intra-op thread, fp32 and bf16 "
        "interleaved; CPU = process CPU time; the ratio is bf16's time over fp32's per round, median (spread), so "
        f"above 1 means bf16 is slower. Sizes: {s['layers']} layers, hidden {s['hidden']}, FFN {s['intermediate']}, "
        f"{s['regions']} regions x {s['feature_dim']}-d, captions up to {s['words']} words, batch {s['batch']}.",
        "",
        "| work | reps | fp32 CPU s | spread | bf16 CPU s | spread | bf16 / fp32 (CPU) | bf16 / fp32 (wall) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        f, b = row["steps"]["fp32"], row["steps"]["bf16"]
        r, rw = row["bf16_over_fp32"], row["bf16_over_fp32_wall"]
        lines.append(
            f"| {row['what']} | {f['reps']} | {f['cpu_s']:.3f} | {fmt_spread(f['cpu_spread'])} | {b['cpu_s']:.3f} | "
            f"{fmt_spread(b['cpu_spread'])} | {r['median']:.2f}x ({fmt_spread(r['spread'])}) | {rw['median']:.2f}x |"
        )
    g = report["rows"][0]["gflops"]
    lines += ["", f"Matmul rate: fp32 {g['fp32']:.1f}, bf16 {g['bf16']:.1f} GFLOP per CPU-second.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the code runs")
    ap.add_argument("--min-reps", type=int, default=3)
    ap.add_argument("--max-reps", type=int, default=6)
    ap.add_argument("--out", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    one_thread()
    sizes = speed.tiny_sizes(batch=4) if args.quick else DEMO_SIZES
    report = measure(
        sizes, min_reps=args.min_reps, max_reps=args.max_reps, matmul_repeat=2 if args.quick else 20
    )
    write_outputs(to_markdown(report, argv), report, args.out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
