"""torch.compile as a lever, measured: compile time, steady-state speed-up, and recompiles with shape buckets.

Scoring: `ModelPairScorer(compile="on")` (batches padded to bucketed shapes) against the eager scorer, both bf16
autocast, interleaved with one intra-op thread, CPU and wall time. The pairs span several text lengths and
region counts, so an unbucketed compile would see a new shape nearly every batch; the number of graphs compiled
is read from torch._dynamo's counters. Training: the MLM+ITM step of benchmarks/speed.py with the model compiled
vs eager, two ways: the trainer's `training.compile: on` (encoder layers compiled in place) and the whole model
through torch.compile. Compile time (the first call) is reported separately, with the break-even number of pairs / steps.

    .venv/bin/python -m benchmarks.bench_levers --out benchmarks/results/levers.md
    .venv/bin/python -m benchmarks.bench_levers --quick      # tiny sizes: checks the code runs
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
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
    timed,
    write_outputs,
)
from imagebert.runtime.attention import set_attention
from imagebert.runtime.compile import compile_for_training
from imagebert.runtime.precision import MasterWeights


def _inductor_cache_state() -> str:
    """Compile times depend on whether inductor's on-disk cache already holds these graphs: say which."""
    import os

    from torch._inductor.runtime.cache_dir_utils import cache_dir

    path = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or cache_dir())
    empty = not path.exists() or not any(path.iterdir())
    return (
        f"inductor cache {path}: {'empty at the start (cold compile)' if empty else 'already filled (warm)'}"
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
    # the first call compiles every shape bucket it meets
    first_cpu, first_wall, ref = timed(lambda: compiled.score_pairs(cap, img))
    graphs_after_first = _graphs()
    base = eager.score_pairs(cap, img)
    series = run_interleaved({"eager": lambda: eager.score_pairs(cap, img),
                              "compiled": lambda: compiled.score_pairs(cap, img)},
                             warmup=1, min_reps=min_reps, max_reps=max_reps,
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


TRAINING_COMPILE_MODES = {
    "layers": "the trainer's setting (`training.compile: on`): encoder layers compiled in place, one shared graph",
    "whole": "the whole model through `torch.compile(model)`",
}


def training_lever(
    sizes: speed.Sizes, precision: str, min_reps: int, max_reps: int, mode: str = "layers"
) -> dict[str, Any]:
    builder = speed.BatchBuilder(sizes)
    inputs, _ = builder(speed.make_pairs(sizes.batch, sizes), seed=1)
    eager_model = speed.build_ours(sizes, mlm_itm_only=True)
    comp_model = speed.build_ours(sizes, mlm_itm_only=True)
    comp_model.load_state_dict(eager_model.state_dict())
    if mode == "layers":
        compile_for_training(comp_model)
        compiled = comp_model
    else:
        compiled = torch.compile(comp_model, dynamic=False)
    opt_e, opt_c = speed._optimizer(eager_model), speed._optimizer(comp_model)

    def eager_step() -> None:
        speed._train_step(eager_model, opt_e, lambda: eager_model(**inputs).loss, precision)

    def compiled_step() -> None:
        speed._train_step(comp_model, opt_c, lambda: compiled(**inputs).loss, precision)

    torch._dynamo.reset()
    first_cpu, first_wall, _ = timed(compiled_step)
    eager_step()
    series = run_interleaved({"eager": eager_step, "compiled": compiled_step}, warmup=2, min_reps=min_reps,
                             max_reps=max_reps,
                             log=lambda m: print(f"[levers] training {m}", file=sys.stderr, flush=True))  # fmt: skip
    saved = series["eager"].cpu_s - series["compiled"].cpu_s
    compile_cpu = first_cpu - series["compiled"].cpu_s
    return {
        "precision": precision, "mode": mode, "eager": series["eager"].summary(),
        "compiled": series["compiled"].summary(),
        "speedup_cpu": paired_ratio(series["eager"], series["compiled"]),
        "speedup_wall": paired_ratio(series["eager"], series["compiled"], "wall"),
        "first_call_cpu_s": first_cpu, "first_call_wall_s": first_wall, "compile_cpu_s": compile_cpu,
        "break_even_steps": compile_cpu / saved if saved > 0 else float("inf"),
    }  # fmt: skip


PEER_ROWS = {
    "ours": "ours, defaults (fp32 weights{autocast})",
    "ours_compiled": "ours, `training.compile: on`",
    "ours_bf16_weights": "ours, `training.weights: bf16` (fp32 masters)",
    "ours_bf16_weights_compiled": "ours, `training.weights: bf16` + `training.compile: on`",
    "ours_eager_attention": "ours, `training.attention: eager`",
    "ours_bf16_weights_eager_attention": "ours, `training.weights: bf16` + `training.attention: eager`",
    "visualbert": "VisualBERT (HF), fp32 weights{autocast}",
}


def peer_lever(sizes: speed.Sizes, precision: str, min_reps: int, max_reps: int) -> dict[str, Any]:
    """The training levers against VisualBERT on the same work (the like-for-like "masked" step of
    benchmarks/speed.py: MLM on the same masked tokens of matched pairs, ITM, clip 1.0, fused AdamW), every
    setting in the same interleaved rounds. bf16 rows use autocast; the bf16-weight rows keep fp32 masters."""
    builder = speed.BatchBuilder(sizes)
    inputs, _ = builder(speed.make_pairs(sizes.batch, sizes), seed=1)
    models = {"ours": speed.build_ours(sizes, mlm_itm_only=True), "visualbert": speed.build_peer(sizes)}
    like_for_like = speed.training_settings(sizes, inputs, precision, models)
    steps: dict[str, Any] = {"ours": like_for_like["ours_masked"]}

    def variant(resident: bool, compiled: bool, attention: str = "sdpa") -> Any:
        model = speed.build_ours(sizes, mlm_itm_only=True)
        model.load_state_dict(models["ours"].state_dict())
        set_attention(model, attention, "cpu", None)
        master = MasterWeights(model) if resident else None
        params = [m for _, m in master.pairs] if master is not None else list(model.parameters())
        opt = torch.optim.AdamW(params, lr=1e-5, fused=True)  # the optimizer of the other rows
        if compiled:
            compile_for_training(model)

        def step() -> None:
            speed._train_step(model, opt, lambda: model(**inputs).loss, precision, master)

        return step

    steps["ours_compiled"] = variant(False, True)
    steps["ours_eager_attention"] = variant(False, False, "eager")
    if precision == "bf16":
        steps["ours_bf16_weights"] = variant(True, False)
        steps["ours_bf16_weights_compiled"] = variant(True, True)
        steps["ours_bf16_weights_eager_attention"] = variant(True, False, "eager")
    steps["visualbert"] = like_for_like["visualbert_masked"]
    for fn in steps.values():  # the compiled rows compile here, outside the timed rounds
        fn()
    series = run_interleaved(steps, warmup=2, min_reps=min_reps, max_reps=max_reps,
                             log=lambda m: print(f"[levers] peer {precision} {m}", file=sys.stderr, flush=True))  # fmt: skip
    return {
        "precision": precision,
        "steps": {k: v.summary() for k, v in series.items()},
        "vs_visualbert": {
            k: paired_ratio(series["visualbert"], series[k]) for k in series if k != "visualbert"
        },
        "vs_visualbert_wall": {
            k: paired_ratio(series["visualbert"], series[k], "wall") for k in series if k != "visualbert"
        },
        "vs_ours": {k: paired_ratio(series["ours"], series[k]) for k in series if k != "ours"},
    }


TITLE = "Levers: torch.compile, bf16-resident weights and the attention kernel for scoring and training"


def title(sizes: dict[str, int]) -> str:
    """The page title; a run at other than the default (BERT-base) sizes names the sizes it changed, so two
    levers pages never share a heading in BENCHMARKS.md."""
    default = dataclasses.asdict(speed.Sizes())
    changed = [f"{k} {v}" for k, v in sizes.items() if default.get(k) != v]
    return TITLE + (f", at other sizes ({', '.join(changed)})" if changed else "")


def to_markdown(report: dict[str, Any], argv: list[str]) -> str:
    s = report["sizes"]
    lines = [
        "# " + title(s),
        "",
        command_line("benchmarks.bench_levers", argv),
        "",
        machine_line(),
        "",
        "Written by `benchmarks/bench_levers.py` (do not edit by hand). One intra-op thread; eager and compiled "
        "interleaved; CPU = process CPU time; speed-ups per round, median (spread).",
        "",
        f"Sizes: {s['layers']} layers, hidden {s['hidden']}, {s['heads']} heads, FFN {s['intermediate']}, "
        f"{s['regions']} regions max x {s['feature_dim']}-d, "
        f"captions up to {s['words']} words, training batch {s['batch']}. Compile times: "
        f"{report.get('inductor_cache', 'inductor cache state not recorded')}.",
        "",
    ]
    sc = report.get("scoring")
    if sc or report.get("training"):  # `--parts peer` alone has no compile table
        lines += [
            "### torch.compile against eager",
            "",
            "| lever | eager CPU s | spread | compiled CPU s | spread | speed-up CPU | speed-up wall | "
            "first call (compile) CPU s | break-even |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
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
            f"| training step (MLM+ITM), {tr['precision']}, {tr.get('mode', 'whole')} | {e['cpu_s']:.2f} | {fmt_spread(e['cpu_spread'])} | "
            f"{c['cpu_s']:.2f} | {fmt_spread(c['cpu_spread'])} | {tr['speedup_cpu']['median']:.3f}x "
            f"({fmt_spread(tr['speedup_cpu']['spread'])}) | {tr['speedup_wall']['median']:.3f}x | "
            f"{tr['first_call_cpu_s']:.1f} | {tr['break_even_steps']:,.0f} steps |"
        )
    if report.get("training"):
        lines += [
            "",
            "Training modes: " + "; ".join(f"`{k}`: {v}" for k, v in TRAINING_COMPILE_MODES.items()) + ".",
        ]
    for pl in report.get("peer", []):
        prec = pl["precision"]
        lines += [
            "",
            f"### Training levers against VisualBERT on the same work, {prec}",
            "",
            "The like-for-like step of `benchmarks/speed.py` (MLM on the same masked tokens of matched pairs, ITM, "
            "clip 1.0, fused AdamW, the batch above), every row in the same interleaved rounds. Ratios are "
            "VisualBERT's time over the row's, per round, median (spread); compile time is spent before the "
            "rounds and not counted (the compile table gives it where `--parts` includes scoring or training).",
            "",
            "| step | reps | CPU s | spread | wall s | spread | vs VisualBERT (CPU) | vs VisualBERT (wall) | vs our defaults (CPU) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for key, st in pl["steps"].items():
            label = PEER_ROWS[key].format(autocast=" + bf16 autocast" if prec == "bf16" else "")
            vp = pl["vs_visualbert"].get(key)
            vw = pl["vs_visualbert_wall"].get(key)
            vo = pl["vs_ours"].get(key)
            cell = lambda r: f"{r['median']:.3f}x ({fmt_spread(r['spread'])})" if r else "1x"  # noqa: E731
            lines.append(f"| {label} | {st['reps']} | {st['cpu_s']:.3f} | {fmt_spread(st['cpu_spread'])} | "
                         f"{st['wall_s']:.3f} | {fmt_spread(st['wall_spread'])} | {cell(vp)} | "
                         f"{(vw['median'] if vw else 1):.3f}x | {cell(vo)} |")  # fmt: skip
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
    ap.add_argument("--pairs", type=int, default=128, help="scoring: pairs per timed call")
    ap.add_argument(
        "--batch", type=int, default=32, help="scoring: pairs per forward (training: --size batch=N)"
    )
    ap.add_argument("--min-reps", type=int, default=3)
    ap.add_argument("--max-reps", type=int, default=6)
    ap.add_argument("--parts", default="scoring,training,peer")
    ap.add_argument("--peer-precisions", default="bf16,fp32")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument(
        "--training-modes", default="layers,whole", help=f"of {', '.join(TRAINING_COMPILE_MODES)}"
    )
    ap.add_argument(
        "--size", action="append", default=[], metavar="FIELD=N",
        help="override any benchmarks.speed.Sizes field, e.g. the demo model: --size layers=6 --size hidden=384 "
        "--size intermediate=1536 --size feature_dim=1280 --size regions=8 --size words=12 --size batch=32",
    )  # fmt: skip
    ap.add_argument("--out", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    one_thread()
    sizes = speed.tiny_sizes(batch=4) if args.quick else speed.Sizes()
    sizes = speed.override_sizes(sizes, args.size)
    report: dict[str, Any] = {"sizes": dataclasses.asdict(sizes), "inductor_cache": _inductor_cache_state()}
    parts = args.parts.split(",")
    if "scoring" in parts:
        report["scoring"] = scoring_lever(sizes, args.pairs, args.batch, args.min_reps, args.max_reps)
    if "training" in parts:
        report["training"] = [training_lever(sizes, args.precision, args.min_reps, args.max_reps, mode)
                              for mode in args.training_modes.split(",")]  # fmt: skip
    if "peer" in parts:
        report["peer"] = [
            peer_lever(sizes, p, args.min_reps, args.max_reps) for p in args.peer_precisions.split(",")
        ]
    write_outputs(to_markdown(report, argv), report, args.out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
