"""torch.compile as a lever, measured: compile time, steady-state speed-up, and recompiles with shape buckets.

Scoring: `ModelPairScorer(compile="on")` (batches padded to bucketed shapes) against the eager scorer, both bf16
autocast, interleaved with one intra-op thread, CPU and wall time. The pairs span several text lengths and
region counts, so an unbucketed compile would see a new shape nearly every batch; the number of graphs compiled
is read from torch._dynamo's counters. Training: the MLM+ITM step of benchmarks/speed.py with the model compiled
vs eager. Compile time (the first call) is reported separately, with the break-even number of pairs / steps.

    .venv/bin/python -m benchmarks.bench_levers --out benchmarks/results/levers.md
    .venv/bin/python -m benchmarks.bench_levers --quick      # tiny sizes: checks the code runs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import speed
from benchmarks.timing import (
    command_line,
    fmt_spread,
    machine_line,
    one_thread,
    paired_ratio,
    run_interleaved,
)


def _frame_count() -> int:
    from torch._dynamo.utils import counters

    return int(sum(counters["stats"].values())) if "stats" in counters else 0


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"].get("unique_graphs", 0))


def scoring_lever(sizes: speed.Sizes, pairs: int, batch: int, min_reps: int, max_reps: int) -> dict[str, Any]:
    from imagebert.data.collate import PairCollator
    from imagebert.modeling import load_tokenizer
    from imagebert.retrieval.scorers import ModelPairScorer

    per_image = 8
    gallery = speed.scoring_gallery(sizes, max(1, -(-pairs // per_image)), per_image, variable_regions=True)
    # vary the caption lengths too
    rng = np.random.default_rng(5)
    gallery.texts = [" ".join(t.split()[: int(rng.integers(4, sizes.words + 1))]) for t in gallery.texts]
    collator = PairCollator(load_tokenizer(), max_text_tokens=43, max_regions=max(sizes.regions, 1),
                            feature_dim=sizes.feature_dim, truncate_regions=True)  # fmt: skip
    model = speed.build_retrieval(sizes)
    cap = np.repeat(np.arange(gallery.num_captions), gallery.num_images)[:pairs]
    img = np.tile(np.arange(gallery.num_images), gallery.num_captions)[:pairs]
    eager = ModelPairScorer(model, collator, gallery, precision="bf16", batch_size=batch)
    compiled = ModelPairScorer(model, collator, gallery, precision="bf16", batch_size=batch, compile="on")
    torch._dynamo.reset()
    c0, w0 = time.process_time(), time.perf_counter()
    ref = compiled.score_pairs(cap, img)  # compiles every bucket it meets
    first_cpu, first_wall = time.process_time() - c0, time.perf_counter() - w0
    graphs_after_first = _graphs()
    base = eager.score_pairs(cap, img)
    series = run_interleaved({"eager": lambda: eager.score_pairs(cap, img),
                              "compiled": lambda: compiled.score_pairs(cap, img)},
                             warmup=0, min_reps=min_reps, max_reps=max_reps,
                             log=lambda m: print(f"[levers] scoring {m}", file=sys.stderr, flush=True))  # fmt: skip
    ratio = paired_ratio(series["eager"], series["compiled"])
    saved_per_pair = (series["eager"].cpu_s - series["compiled"].cpu_s) / len(cap)
    compile_cpu = first_cpu - series["compiled"].cpu_s
    return {
        "pairs": len(cap), "batch": batch, "eager": series["eager"].summary(), "compiled": series["compiled"].summary(),
        "speedup_cpu": ratio, "speedup_wall": paired_ratio(series["eager"], series["compiled"], "wall"),
        "first_call_cpu_s": first_cpu, "first_call_wall_s": first_wall, "compile_cpu_s": compile_cpu,
        "graphs_first_call": graphs_after_first, "graphs_after_all_reps": _graphs(),
        "batches_per_call": -(-len(cap) // batch),
        "break_even_pairs": compile_cpu / saved_per_pair if saved_per_pair > 0 else float("inf"),
        "max_abs_score_diff": float(np.abs(ref - base).max()),
    }  # fmt: skip


def training_lever(sizes: speed.Sizes, precision: str, min_reps: int, max_reps: int) -> dict[str, Any]:
    builder = speed.BatchBuilder(sizes)
    inputs, _ = builder(speed.make_pairs(sizes.batch, sizes), seed=1)
    eager_model = speed.build_ours(sizes, mlm_itm_only=True)
    comp_model = speed.build_ours(sizes, mlm_itm_only=True)
    comp_model.load_state_dict(eager_model.state_dict())
    compiled = torch.compile(comp_model, dynamic=False)
    opt_e, opt_c = speed._optimizer(eager_model), speed._optimizer(comp_model)

    def eager_step() -> None:
        speed._train_step(eager_model, opt_e, lambda: eager_model(**inputs).loss, precision)

    def compiled_step() -> None:
        speed._train_step(comp_model, opt_c, lambda: compiled(**inputs).loss, precision)

    torch._dynamo.reset()
    c0, w0 = time.process_time(), time.perf_counter()
    compiled_step()
    first_cpu, first_wall = time.process_time() - c0, time.perf_counter() - w0
    eager_step()
    series = run_interleaved({"eager": eager_step, "compiled": compiled_step}, warmup=0, min_reps=min_reps,
                             max_reps=max_reps,
                             log=lambda m: print(f"[levers] training {m}", file=sys.stderr, flush=True))  # fmt: skip
    saved = series["eager"].cpu_s - series["compiled"].cpu_s
    compile_cpu = first_cpu - series["compiled"].cpu_s
    return {
        "precision": precision, "eager": series["eager"].summary(), "compiled": series["compiled"].summary(),
        "speedup_cpu": paired_ratio(series["eager"], series["compiled"]),
        "speedup_wall": paired_ratio(series["eager"], series["compiled"], "wall"),
        "first_call_cpu_s": first_cpu, "first_call_wall_s": first_wall, "compile_cpu_s": compile_cpu,
        "break_even_steps": compile_cpu / saved if saved > 0 else float("inf"),
    }  # fmt: skip


def to_markdown(report: dict[str, Any], argv: list[str]) -> str:
    s = report["sizes"]
    lines = [
        "# Levers: torch.compile for scoring and training",
        "",
        command_line("benchmarks.bench_levers", argv),
        "",
        machine_line(),
        "",
        "Written by `benchmarks/bench_levers.py` (do not edit by hand). One intra-op thread; eager and compiled "
        "interleaved; CPU = process CPU time; speed-ups per round, median (spread).",
        "",
        f"Sizes: {s['layers']} layers, hidden {s['hidden']}, {s['regions']} regions max x {s['feature_dim']}-d, "
        f"captions up to {s['words']} words, training batch {s['batch']}.",
        "",
        "| lever | eager CPU s | spread | compiled CPU s | spread | speed-up CPU | speed-up wall | "
        "first call (compile) CPU s | break-even |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    sc = report.get("scoring")
    if sc:
        e, c = sc["eager"], sc["compiled"]
        lines.append(
            f"| scoring, bf16, {sc['pairs']} pairs (variable lengths), batch {sc['batch']} | {e['cpu_s']:.2f} | "
            f"{fmt_spread(e['cpu_spread'])} | {c['cpu_s']:.2f} | {fmt_spread(c['cpu_spread'])} | "
            f"{sc['speedup_cpu']['median']:.3f}x ({fmt_spread(sc['speedup_cpu']['spread'])}) | "
            f"{sc['speedup_wall']['median']:.3f}x | {sc['first_call_cpu_s']:.1f} | "
            f"{sc['break_even_pairs']:,.0f} pairs |"
        )
    for tr in report.get("training", []):
        e, c = tr["eager"], tr["compiled"]
        lines.append(
            f"| training step (MLM+ITM), {tr['precision']} | {e['cpu_s']:.2f} | {fmt_spread(e['cpu_spread'])} | "
            f"{c['cpu_s']:.2f} | {fmt_spread(c['cpu_spread'])} | {tr['speedup_cpu']['median']:.3f}x "
            f"({fmt_spread(tr['speedup_cpu']['spread'])}) | {tr['speedup_wall']['median']:.3f}x | "
            f"{tr['first_call_cpu_s']:.1f} | {tr['break_even_steps']:,.0f} steps |"
        )
    if sc:
        lines += [
            "",
            f"Shape buckets: the compiled scorer built {sc['graphs_first_call']} graph(s) for "
            f"{sc['batches_per_call']} batches of varied lengths in its first call, and "
            f"{sc['graphs_after_all_reps']} after every repetition (no recompiles once the buckets are seen). "
            f"Max abs score difference compiled vs eager: {sc['max_abs_score_diff']:.2e}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--layers", type=int, default=None, help="override the encoder depth (default 12)")
    ap.add_argument("--pairs", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--min-reps", type=int, default=3)
    ap.add_argument("--max-reps", type=int, default=6)
    ap.add_argument("--parts", default="scoring,training")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    one_thread()
    sizes = speed.tiny_sizes(batch=4) if args.quick else speed.Sizes()
    if args.layers:
        sizes = dataclasses.replace(sizes, layers=args.layers)
    report: dict[str, Any] = {"sizes": dataclasses.asdict(sizes)}
    parts = args.parts.split(",")
    if "scoring" in parts:
        report["scoring"] = scoring_lever(sizes, args.pairs, args.batch, args.min_reps, args.max_reps)
    if "training" in parts:
        report["training"] = [training_lever(sizes, args.precision, args.min_reps, args.max_reps)]
    page = to_markdown(report, argv)
    print(page)
    if args.out:
        Path(args.out).write_text(page, encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
