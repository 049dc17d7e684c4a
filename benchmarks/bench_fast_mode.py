"""Fast mode's speed-up and the recall it costs, measured end to end through `imagebert evaluate`.

Runs `imagebert evaluate` on a trained checkpoint (the demo's fine-tuned one by default) exhaustively and with
`--mode fast --k K` for each K, as separate processes, interleaved (exhaustive, k=8, k=16, k=32, exhaustive, ...)
with one intra-op thread, a fresh output folder (no score cache) each time. Per run: the child's CPU time
(getrusage of children) and wall time, cross-encoder passes, IR/TR R@1 read from its results.json. The speed-up
is exhaustive / fast of the medians, and per round; the recall cost is exhaustive R@1 - fast R@1 (deterministic).

    .venv/bin/python -m benchmarks.bench_fast_mode --checkpoint /work/demo_out/finetune/best \\
        --dataset /work/demo_out/dataset.yaml --out benchmarks/results/fast_mode.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.timing import (
    add_demo_checkpoint_arguments,
    command_line,
    fmt_spread,
    machine_line,
    one_thread,
    spread,
    write_outputs,
)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_evaluate(checkpoint: str, dataset: str, split: str, out: Path, mode: str, k: int | None,
                 extra: list[str]) -> dict[str, Any]:  # fmt: skip
    """One `imagebert evaluate` process; its CPU and wall seconds and the numbers in its results.json."""
    cmd = [sys.executable, "-m", "imagebert", "evaluate", "--checkpoint", checkpoint, "--dataset", dataset,
           "--split", split, "--protocol", "flickr1k", "--mode", mode, "--out", str(out), "--overwrite",
           "--threads", "1", *extra]  # fmt: skip
    if k is not None:
        cmd += ["--k", str(k)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    c0, w0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    cpu, wall = _children_cpu() - c0, time.perf_counter() - w0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    report = json.loads((out / "results.json").read_text())
    (label, res), *_ = report["results"]["flickr1k"].items()
    return {"cpu_s": cpu, "wall_s": wall, "label": label, "ir_r1": res["image_retrieval"]["R@1"],
            "tr_r1": res["text_retrieval"]["R@1"], "passes": res["cross_encoder_pairs"],
            "eval_seconds": res["seconds"], "num_captions": report["num_captions"],
            "num_images": report["num_images"], "stderr_tail": proc.stderr.strip().splitlines()[-3:]}  # fmt: skip


def measure(checkpoint: str, dataset: str, *, split: str = "test", ks: list[int], reps: int,
            extra: list[str] | None = None, log=print) -> dict[str, Any]:  # noqa: ANN001  # fmt: skip
    extra = extra or []
    settings: list[tuple[str, str, int | None]] = [("exhaustive", "exhaustive", None)]
    settings += [(f"fast k={k}", "fast", k) for k in ks]
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in settings}
    work = Path(tempfile.mkdtemp(prefix="bench_fast_"))
    try:
        for rnd in range(reps):
            for name, mode, k in settings:
                out = work / f"{name.replace(' ', '_').replace('=', '')}-{rnd}"
                r = run_evaluate(checkpoint, dataset, split, out, mode, k, extra)
                runs[name].append(r)
                log(f"[fast_mode] round {rnd + 1} {name}: {r['cpu_s']:.1f} CPU-s, {r['wall_s']:.1f} s wall, "
                    f"{r['passes']} passes, IR R@1 {r['ir_r1']:.2f}, TR R@1 {r['tr_r1']:.2f}")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ex = runs["exhaustive"]
    rows = {}
    for name, rs in runs.items():
        cpu = [r["cpu_s"] for r in rs]
        wall = [r["wall_s"] for r in rs]
        per_round = [e["cpu_s"] / r["cpu_s"] for e, r in zip(ex, rs, strict=True)]
        rows[name] = {
            "reps": len(rs), "cpu_s": statistics.median(cpu), "cpu_spread": spread(cpu),
            "wall_s": statistics.median(wall), "wall_spread": spread(wall), "passes": rs[0]["passes"],
            "ir_r1": rs[0]["ir_r1"], "tr_r1": rs[0]["tr_r1"],
            "speedup_cpu": statistics.median([e["cpu_s"] for e in ex]) / statistics.median(cpu),
            "speedup_cpu_per_round_spread": spread(per_round),
            "speedup_wall": statistics.median([e["wall_s"] for e in ex]) / statistics.median(wall),
            "pass_ratio": ex[0]["passes"] / rs[0]["passes"],
            "ir_r1_lost": ex[0]["ir_r1"] - rs[0]["ir_r1"], "tr_r1_lost": ex[0]["tr_r1"] - rs[0]["tr_r1"],
        }  # fmt: skip
    first = ex[0]
    return {"checkpoint": checkpoint, "dataset": dataset, "split": split, "num_captions": first["num_captions"],
            "num_images": first["num_images"], "extra": extra, "rows": rows}  # fmt: skip


def to_markdown(report: dict[str, Any], argv: list[str]) -> str:
    lines = [
        "# Fast mode vs exhaustive, end to end through `imagebert evaluate`",
        "",
        command_line("benchmarks.bench_fast_mode", argv),
        "",
        machine_line(),
        "",
        "Written by `benchmarks/bench_fast_mode.py` (do not edit by hand). Each row is whole `imagebert evaluate` "
        "processes (model load, first stage, cross-encoder, metrics), `--threads 1`, fresh output folder, "
        "interleaved with the other rows; CPU = the child process's user + system time.",
        "",
        f"Checkpoint `{report['checkpoint']}`, dataset `{report['dataset']}` split `{report['split']}` "
        f"({report['num_captions']} captions x {report['num_images']} images).",
        "",
        "| mode | reps | cross-encoder passes | fewer passes | CPU s | spread | wall s | spread | "
        "speed-up (CPU) | speed-up (wall) | IR R@1 | TR R@1 | IR R@1 lost | TR R@1 lost |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["rows"].items():
        lines.append(
            f"| {name} | {r['reps']} | {r['passes']:,} | {r['pass_ratio']:.1f}x | {r['cpu_s']:.1f} | "
            f"{fmt_spread(r['cpu_spread'])} | {r['wall_s']:.1f} | {fmt_spread(r['wall_spread'])} | "
            f"{r['speedup_cpu']:.2f}x | {r['speedup_wall']:.2f}x | {r['ir_r1']:.2f} | {r['tr_r1']:.2f} | "
            f"{r['ir_r1_lost']:+.2f} | {r['tr_r1_lost']:+.2f} |"
        )
    lines += ["", _targets_line(report["rows"])]
    return "\n".join(lines) + "\n"


TARGET_PASS_RATIO, TARGET_WALL_SPEEDUP, TARGET_MAX_R1_LOST = 20.0, 10.0, 0.5  # issue 14's fast-mode targets


def _targets_line(rows: dict[str, dict[str, Any]]) -> str:
    """Which fast rows meet all of the issue's targets at once (computed, so the page cannot claim more)."""
    met = [
        name
        for name, r in rows.items()
        if name != "exhaustive"
        and r["pass_ratio"] >= TARGET_PASS_RATIO
        and r["speedup_wall"] >= TARGET_WALL_SPEEDUP
        and max(r["ir_r1_lost"], r["tr_r1_lost"]) <= TARGET_MAX_R1_LOST
    ]
    return (
        f"Rows meeting every target at once (>= {TARGET_PASS_RATIO:g}x fewer passes, >= {TARGET_WALL_SPEEDUP:g}x "
        f"less wall time, <= {TARGET_MAX_R1_LOST:g} R@1 lost each way): {', '.join(met) if met else 'none'}."
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_demo_checkpoint_arguments(ap)
    ap.add_argument("--k", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--reps", type=int, default=2, help="interleaved rounds (each runs every mode once)")
    ap.add_argument(
        "--extra", nargs=argparse.REMAINDER, default=[], help="more `imagebert evaluate` arguments"
    )
    ap.add_argument("--out", default=None, help="write the results page (markdown) here")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    one_thread()  # the children run with --threads 1; the Machine: line reports this process's setting
    if not (Path(args.checkpoint) / "config.json").is_file():
        print(f"bench_fast_mode: no checkpoint at {args.checkpoint} (run `make demo` first)", file=sys.stderr)
        return 2
    report = measure(args.checkpoint, args.dataset, split=args.split, ks=args.k, reps=args.reps, extra=args.extra,
                     log=lambda m: print(m, file=sys.stderr, flush=True))  # fmt: skip
    page = to_markdown(report, argv)
    write_outputs(page, report, args.out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
