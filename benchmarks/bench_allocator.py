"""The CPU allocator lever (`training.cpu_allocator`, `--cpu-allocator`): system malloc against the tuned
thresholds, on the like-for-like training step of benchmarks/speed.py (ours and VisualBERT, MLM on the same masked
tokens + ITM) and on scoring through the scorer `imagebert evaluate` runs (128 pairs, bf16 autocast).

mallopt is process-wide and cannot be undone, so each setting runs in its own child process; children alternate
(system, tuned, system, tuned, ...) so that a slow stretch of the shared machine hits both. Each child builds both
models and the scorer, warms each up with three steps, then times `--steps` interleaved steps of each, recording user and system
CPU time (getrusage, microseconds: os.times counts 10 ms ticks, which read 0 for a tiny step) and wall time per
step, and its peak RSS.

    .venv/bin/python -m benchmarks.bench_allocator --rounds 3 --steps 3 --out benchmarks/results/allocator.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks.timing import command_line, fmt_spread, machine_line, spread, write_outputs

SETTINGS = ("system", "tuned")
STEPS = ("ours_masked", "visualbert_masked", "scoring")
SCORING_PAIRS = (
    128  # one `ModelPairScorer.score_pairs` call of 128 pairs, batch 128, bf16 autocast (evaluate's
)
# `--precision auto` on this AMX machine): the work of `imagebert evaluate`


def child(setting: str, precision: str, steps: int, tiny: bool) -> dict[str, Any]:
    """Runs inside the child process: the allocator setting first (before any tensor exists), then the steps."""
    from imagebert.runtime.allocator import tune_cpu_allocator

    applied = tune_cpu_allocator(setting)
    from benchmarks import speed
    from benchmarks.timing import one_thread

    one_thread(allocator=setting)
    sizes = speed.tiny_sizes() if tiny else speed.Sizes()
    builder = speed.BatchBuilder(sizes)
    inputs, _ = builder(speed.make_pairs(sizes.batch, sizes), seed=1)
    models = {"ours": speed.build_ours(sizes, mlm_itm_only=True), "visualbert": speed.build_peer(sizes)}
    fns: dict[str, Any] = dict(speed.training_settings(sizes, inputs, precision, models))
    scorers, cap, img = speed.build_scorers(sizes, {"scoring": {"precision": "bf16"}},
                                            pairs=8 if tiny else SCORING_PAIRS)  # fmt: skip
    fns["scoring"] = lambda: scorers["scoring"].score_pairs(cap, img)
    for _ in range(3):  # three warm-up rounds: the heap reaches every step's peak before timing starts
        for name in STEPS:
            fns[name]()
    out: dict[str, Any] = {"applied": applied, **{n: {"user": [], "sys": [], "wall": []} for n in STEPS}}
    for _ in range(steps):
        for name in STEPS:
            t0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            fns[name]()
            t1 = resource.getrusage(resource.RUSAGE_SELF)
            rec = out[name]
            rec["user"].append(t1.ru_utime - t0.ru_utime)
            rec["sys"].append(t1.ru_stime - t0.ru_stime)
            rec["wall"].append(time.perf_counter() - w0)
    out["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_child(setting: str, precision: str, steps: int, tiny: bool) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.bench_allocator", "--child", setting, "--precision", precision,
           "--steps", str(steps)] + (["--tiny"] if tiny else [])  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for knob in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"):
        env.pop(knob, None)  # the parent's environment must not tune the "system" child
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cpu(rec: dict[str, list[float]]) -> list[float]:
    """Per-step process CPU time (user + system) of one child's record of one model."""
    return [u + s for u, s in zip(rec["user"], rec["sys"], strict=True)]


def measure(
    *,
    rounds: int,
    steps: int,
    precision: str = "fp32",
    tiny: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    runs: dict[str, list[dict]] = {s: [] for s in SETTINGS}
    for rnd in range(rounds):
        for setting in SETTINGS:
            r = run_child(setting, precision, steps, tiny)
            runs[setting].append(r)
            log(f"[allocator] round {rnd + 1} {setting}: " + ", ".join(
                f"{n} user {statistics.median(r[n]['user']):.2f} sys {statistics.median(r[n]['sys']):.2f}"
                for n in STEPS))  # fmt: skip
    rows: dict[str, dict[str, Any]] = {}
    for setting in SETTINGS:
        for name in STEPS:
            user = [u for r in runs[setting] for u in r[name]["user"]]
            sys_t = [s for r in runs[setting] for s in r[name]["sys"]]
            cpu = [c for r in runs[setting] for c in _cpu(r[name])]
            wall = [w for r in runs[setting] for w in r[name]["wall"]]
            rows[f"{setting}/{name}"] = {
                "setting": setting, "step": name, "steps": len(cpu),
                "user_s": statistics.median(user), "user_spread": spread(user),
                "sys_s": statistics.median(sys_t), "sys_min": min(sys_t), "sys_max": max(sys_t),
                "cpu_s": statistics.median(cpu), "cpu_spread": spread(cpu),
                "wall_s": statistics.median(wall), "wall_spread": spread(wall),
                "max_rss_mib": max(r["max_rss_mib"] for r in runs[setting]),
                "applied": all(r["applied"] for r in runs[setting]),
            }  # fmt: skip
    speedups = {}
    for name in STEPS:
        per_round = [
            statistics.median(_cpu(a[name])) / statistics.median(_cpu(b[name]))
            for a, b in zip(runs["system"], runs["tuned"], strict=True)
        ]
        speedups[name] = {"median": statistics.median(per_round), "spread": spread(per_round)}
    return {"precision": precision, "rounds": rounds, "steps_per_child": steps, "tiny": tiny, "rows": rows,
            "speedups": speedups, "runs": runs}  # fmt: skip


def to_markdown(report: dict[str, Any], argv: list[str]) -> str:
    lines = [
        "## CPU allocator: glibc malloc as it comes against `training.cpu_allocator: tuned` / `--cpu-allocator tuned`",
        "",
        command_line("benchmarks.bench_allocator", argv),
        "",
        machine_line(allocator="per row, each in a process of its own"),
        "",
        "Written by `benchmarks/bench_allocator.py` (do not edit by hand). The like-for-like training step of "
        f"`benchmarks/speed.py` ({report['precision']}, MLM on the same masked tokens + ITM, clip 1.0, fused AdamW, "
        f"BERT-base sizes{' (tiny sizes)' if report['tiny'] else ''}), and `scoring`: one `ModelPairScorer."
        f"score_pairs` call of {SCORING_PAIRS} pairs (batch 128, bf16 autocast, fp32 score head; what `imagebert "
        "evaluate` runs), one intra-op thread. Each setting runs in its "
        f"own child process (mallopt is process-wide), {report['rounds']} children per setting alternating, "
        f"{report['steps_per_child']} timed steps of each row per child after three warm-up steps. Times are medians "
        "over all timed steps; spread = (max - min) / median; the speed-up is system / tuned CPU time per round "
        "(median of per-child medians).",
        "",
        "| allocator | step | steps | user s | spread | system s (min..max) | CPU s | spread | wall s | spread | "
        "peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"].values():
        lines.append(
            f"| {row['setting']} | {row['step']} | {row['steps']} | {row['user_s']:.3f} | "
            f"{fmt_spread(row['user_spread'])} | {row['sys_s']:.3f} ({row['sys_min']:.2f}..{row['sys_max']:.2f}) | "
            f"{row['cpu_s']:.3f} | {fmt_spread(row['cpu_spread'])} | {row['wall_s']:.3f} | "
            f"{fmt_spread(row['wall_spread'])} | {row['max_rss_mib']:.0f} |"
        )
    lines += ["", "| step | speed-up, tuned vs system (CPU, per round) |", "|---|---|"]
    for name, s in report["speedups"].items():
        lines.append(f"| {name} | {s['median']:.3f}x ({fmt_spread(s['spread'])}) |")
    applied = all(r["applied"] for r in report["rows"].values() if r["setting"] == "tuned")
    lines += ["", f"Tuning in effect in every tuned child: {'yes' if applied else 'NO'}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="children per setting")
    ap.add_argument("--steps", type=int, default=3, help="timed steps of each model per child")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (the smoke test)")
    ap.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    ap.add_argument("--out")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.precision, args.steps, args.tiny)))
        return 0
    from benchmarks.timing import one_thread

    one_thread(allocator="system")  # the children's thread count, so that the page's machine line says so
    report = measure(rounds=args.rounds, steps=args.steps, precision=args.precision, tiny=args.tiny,
                     log=lambda m: print(m, file=sys.stderr, flush=True))  # fmt: skip
    write_outputs(to_markdown(report, argv), report, args.out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
