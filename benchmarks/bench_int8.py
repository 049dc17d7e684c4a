"""int8 encoder weights for CPU scoring (`--weights int8` and `--weights int8-static`): the matmul rates,
BERT-base-size scoring, and the demo checkpoint's exhaustive evaluation with the recall it costs.

Three parts, each interleaved, one intra-op thread, process CPU time and wall time, spread printed:

A. the encoder's products at the model's own shapes (Q/K/V/attention output H->H, intermediate H->I, output
   I->H) over `--rows` rows: fp32 `F.linear` against fbgemm's dynamic int8 Linear (activations quantised per
   call, as the scorer runs it) and `torch._int_mm` (the bare int8 x int8 -> int32 product torchao's CPU path
   uses), in GFLOP per CPU-second;
B. pairs/s through `ModelPairScorer` (the scorer `imagebert evaluate` runs) at BERT-base size (`--size` to
   change), today's default precision against `weights="int8"` and `weights="int8-static"`, with the largest
   score difference and each setting's set-up (construction, where int8-static calibrates, plus the first call,
   where it compiles);
C. `evaluate_gallery` exhaustive on a trained checkpoint (by default `make demo`'s), the defaults against
   `EvalOptions(weights="int8")` and `"int8-static"` (its compile inside the timed evaluation, with a cold
   compile cache), with IR / TR R@1/5/10 of each: whether the lever may be used without losing recall. Skipped,
   with a line saying so, when the checkpoint is absent.

Inductor compiles in this process (`compile_threads = 1`), so that the compile's CPU time is counted in process
CPU time, and into a fresh cache directory, so that no earlier run's compiled graphs are reused.

    .venv/bin/python -m benchmarks.bench_int8 --out benchmarks/results/int8.md --json benchmarks/out/int8.json
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from benchmarks.speed import Sizes, override_sizes, scoring_comparison, scoring_settings_table, tiny_sizes
from benchmarks.timing import (
    add_demo_checkpoint_arguments,
    command_line,
    fmt_spread,
    machine_line,
    one_thread,
    paired_ratio,
    run_interleaved,
    spread,
    timed,
    write_outputs,
)
from imagebert.retrieval.scorers import CALIBRATION_PAIRS
from imagebert.runtime.int8_static import STATIC_INT8_SEQUENCE_MULTIPLE


def _log(msg: str) -> None:
    print(f"[int8] {msg}", file=sys.stderr, flush=True)


def encoder_shapes(sizes: Sizes) -> dict[str, tuple[int, int]]:
    """(in, out) features of the encoder layer's three distinct product shapes."""
    h, i = sizes.hidden, sizes.intermediate
    return {f"Q/K/V/attn-out {h}->{h}": (h, h), f"intermediate {h}->{i}": (h, i), f"output {i}->{h}": (i, h)}


DEFAULT_ENGINE = torch.backends.quantized.engine
# the other engine worth timing on x86 (the default "x86" engine ran at fbgemm's rate here)
OTHER_ENGINES = [
    e for e in ("onednn",) if e in torch.backends.quantized.supported_engines and e != DEFAULT_ENGINE
]


def _int8_linear(fp32: torch.nn.Linear, engine: str | None) -> torch.nn.Module:
    """`fp32` converted by `quantize_dynamic` as the scorer converts it, packed for `engine` (None: the default)."""
    from torch.ao.quantization import quantize_dynamic

    from imagebert.runtime.quantize import quantized_engine

    with warnings.catch_warnings(), quantized_engine(engine or DEFAULT_ENGINE):
        warnings.simplefilter("ignore")  # torch's deprecation notice for torch.ao.quantization
        return quantize_dynamic(torch.nn.Sequential(fp32), {torch.nn.Linear}, dtype=torch.qint8)


def matmul_rates(sizes: Sizes, rows: int, *, int_mm: bool = True, min_reps: int = 3, max_reps: int = 8,
                 gflop_per_rep: float = 8.0) -> dict[str, Any]:  # fmt: skip
    """GFLOP per CPU-second of each product shape for fp32, dynamic int8 Linear and (optionally) torch._int_mm.
    Each repetition repeats the product up to `gflop_per_rep` GFLOP, so that small shapes are not timed in
    milliseconds; `torch._int_mm` runs once (it is ~50x slower)."""
    from imagebert.runtime.quantize import require_int8_runtime

    require_int8_runtime("cpu")
    out: dict[str, Any] = {"rows": rows, "shapes": {}}
    torch.manual_seed(0)
    for label, (k, n) in encoder_shapes(sizes).items():
        fp32 = torch.nn.Linear(k, n).eval()
        int8 = {f"int8 dynamic Linear ({DEFAULT_ENGINE})": _int8_linear(fp32, None)}
        for engine in OTHER_ENGINES:
            int8[f"int8 dynamic Linear ({engine})"] = _int8_linear(fp32, engine)
        x = torch.randn(rows, k)
        flops = 2 * rows * k * n
        calls = max(1, round(gflop_per_rep * 1e9 / flops))
        xi = torch.randint(-127, 127, (rows, k), dtype=torch.int8)
        wi = torch.randint(-127, 127, (k, n), dtype=torch.int8)
        steps = {"fp32 F.linear": lambda f=fp32, x=x, c=calls: [f(x) for _ in range(c)]}
        for name, q in int8.items():
            steps[name] = lambda q=q, x=x, c=calls: [q(x) for _ in range(c)]
        if int_mm and hasattr(torch, "_int_mm"):
            steps["torch._int_mm"] = lambda a=xi, b=wi: torch._int_mm(a, b)
        with torch.no_grad():
            series = run_interleaved(steps, warmup=1, min_reps=min_reps, max_reps=max_reps,
                                     log=lambda m, lb=label: _log(f"matmul {lb} {m}"))  # fmt: skip
        shape: dict[str, Any] = {}
        for name, s in series.items():
            n_calls = 1 if name == "torch._int_mm" else calls
            shape[name] = {**s.summary(), "gflop_per_cpu_s": flops * n_calls / s.cpu_s / 1e9,
                           "calls_per_rep": n_calls}  # fmt: skip
        for name in int8:
            shape[name]["rate_vs_fp32"] = paired_ratio(series["fp32 F.linear"], series[name])
        out["shapes"][label] = shape
    return out


def scoring_settings(args: argparse.Namespace) -> dict[str, dict]:
    """Part B's `ModelPairScorer` settings: the defaults first (the ratios' base)."""
    settings: dict[str, dict] = {"defaults": {}, "int8 weights": {"weights": "int8"}}
    if not args.no_static:
        settings["int8-static weights"] = {"weights": "int8-static"}
        settings["int8-static weights, static shapes"] = {"weights": "int8-static", "int8_shapes": "static"}
    return settings


@contextlib.contextmanager
def compile_here_and_cold() -> Iterator[None]:
    """Inductor's compile in this process (its CPU time then counts in process CPU time) and into a fresh cache
    directory (no graphs compiled by an earlier run are reused), so int8-static's set-up is measured as a first
    run pays it; both restored afterwards."""
    from torch._inductor import config as inductor_config
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    with (
        tempfile.TemporaryDirectory(prefix="bench_int8_inductor_") as cache,
        temporary_cache_dir(cache),
        inductor_config.patch(compile_threads=1),
    ):
        yield


def demo_evaluation(args: argparse.Namespace) -> dict[str, Any] | None:
    """Part C: the checkpoint's split evaluated exhaustively with the defaults and with int8 weights."""
    from imagebert.data import dataset as data_mod
    from imagebert.retrieval.evaluate import (
        EvalOptions,
        evaluate_gallery,
        gallery_from_dataset,
        load_retrieval_model,
    )
    from imagebert.runtime.quantize import quantized_engine

    if not (Path(args.checkpoint) / "config.json").is_file():
        return None
    model, collator = load_retrieval_model(args.checkpoint)
    ds = data_mod.PairDataset(data_mod.load_dataset_spec(args.dataset), split=args.split)
    gallery = gallery_from_dataset(ds)
    settings = {"defaults": {}, "int8 weights": {"weights": "int8"}}
    engines = {"int8 weights": DEFAULT_ENGINE}
    for engine in OTHER_ENGINES:
        settings[f"int8 weights, {engine} engine"] = {"weights": "int8"}
        engines[f"int8 weights, {engine} engine"] = engine
    if not args.no_static:
        # the same run twice in one cache directory: the first compiles every shape, the second finds them cached
        # (what re-running an evaluation of the same checkpoint and gallery pays)
        for label, shapes in (("", "dynamic"), (", static shapes", "static")):
            kw = {"weights": "int8-static", "int8_shapes": shapes}
            settings[f"int8-static weights{label}"] = kw
            settings[f"int8-static weights{label}, compile cache warm"] = kw
    rows: dict[str, dict[str, Any]] = {
        name: {"cpu": [], "wall": [], "kwargs": kw} for name, kw in settings.items()
    }
    for rnd in range(args.demo_reps):
        for name, kw in settings.items():
            opts = EvalOptions(mode="exhaustive", progress=False, **kw)
            with quantized_engine(
                engines.get(name, DEFAULT_ENGINE)
            ):  # the int8 copy is packed for this engine
                cpu, wall, res = timed(
                    lambda o=opts: evaluate_gallery(model, collator, gallery, "flickr1k", o),
                    with_children=True,
                )
            r = res["flickr1k"]["exhaustive"]
            rows[name]["cpu"].append(cpu)
            rows[name]["wall"].append(wall)
            rows[name]["ir"], rows[name]["tr"] = r["image_retrieval"], r["text_retrieval"]
            _log(f"demo round {rnd + 1} {name}: {cpu:.1f} CPU-s, {wall:.1f} s, IR R@1 "
                 f"{r['image_retrieval']['R@1']:.2f}, TR R@1 {r['text_retrieval']['R@1']:.2f}")  # fmt: skip
    base = rows["defaults"]["cpu"]
    for r in rows.values():
        ratios = [a / b for a, b in zip(base, r["cpu"], strict=True)]
        r["speedup"] = {"median": statistics.median(ratios), "spread": spread(ratios)}
    return {"checkpoint": str(args.checkpoint), "split": args.split, "captions": gallery.num_captions,
            "images": gallery.num_images, "auto_precision": scoring_auto_precision(),
            "rows": rows}  # fmt: skip


def scoring_auto_precision() -> str:
    """What precision `auto` means for scoring on this CPU: "bfloat16" (autocast) where oneDNN has bf16 kernels,
    else "fp32"."""
    from imagebert.runtime.precision import resolve_precision

    dtype = resolve_precision("auto", torch.device("cpu"))
    return "fp32" if dtype is None else str(dtype).split(".")[-1]


def render(argv: list[str], sizes: Sizes, rates: dict, scoring: dict, demo: dict | None, args: Any) -> str:
    lines = [
        "# int8 encoder weights for CPU scoring (`--weights int8`, `--weights int8-static`)",
        "",
        command_line("benchmarks.bench_int8", argv),
        "",
        machine_line(),
        "",
        "Written by `benchmarks/bench_int8.py` (do not edit by hand). Interleaved, one intra-op thread, process "
        "CPU time (wall time beside it). int8 weights: `torch.ao.quantization.quantize_dynamic` on the BERT "
        "encoder's Linear layers (weights int8 per tensor, activations quantised per call, fp32 everywhere else; "
        "`imagebert.runtime.quantize`). int8-static weights: the encoder's layer stack exported and quantised by "
        "torchao's PT2E `X86InductorQuantizer` (weights int8 per channel, activations uint8 per tensor with scales "
        f"calibrated on {CALIBRATION_PAIRS} seeded pairs of the gallery), compiled by inductor with freezing into "
        "oneDNN int8 kernels, with the sequence length symbolic (`int8_shapes` dynamic, the default: one graph "
        f"for every length) or static (one graph per length, sequences padded to a multiple of "
        f"{STATIC_INT8_SEQUENCE_MULTIPLE}) (`imagebert.runtime.int8_static`). Inductor compiles in "
        "this process (`compile_threads = 1`, so the compile's CPU time is counted) into a fresh cache.",
        "",
        f"## A. The encoder's products, {rates['rows']} rows (hidden {sizes.hidden}, intermediate "
        f"{sizes.intermediate})",
        "",
        "| product | kernel | reps | GFLOP per CPU-s | CPU spread | rate vs fp32 (per round) |",
        "|---|---|---|---|---|---|",
    ]
    for label, shape in rates["shapes"].items():
        fp32 = shape["fp32 F.linear"]["gflop_per_cpu_s"]
        for kernel, row in shape.items():
            ratio = row.get("rate_vs_fp32")
            vs = (
                f"{ratio['median']:.2f}x ({fmt_spread(ratio['spread'])})"
                if ratio
                else "1.00x"
                if kernel.startswith("fp32")
                else f"{row['gflop_per_cpu_s'] / fp32:.3f}x (medians)"
            )
            lines.append(f"| {label} | {kernel} | {row['reps']} | {row['gflop_per_cpu_s']:.1f} | "
                         f"{fmt_spread(row['cpu_spread'])} | {vs} |")  # fmt: skip
    lines += [
        "",
        "`torch._int_mm` is timed once per round on the same rows (it is the bare int8 product, no quantisation "
        "of activations); it is what torchao's CPU int8 path calls, hence torchao is not used here.",
        "",
        f"## B. Pairs/s through `ModelPairScorer`, {sizes.layers} layers x {sizes.hidden} hidden, "
        f"{sizes.regions} regions of {sizes.feature_dim}-d, {sizes.words} words; {scoring['pairs']} pairs, batch "
        f"{scoring['batch_size']}",
        "",
        f"`defaults` is the scorer as `imagebert evaluate` builds it: precision `auto`, which is "
        f"{scoring_auto_precision()} on this CPU (autocast where it is not fp32); the int8 settings run fp32 around their int8 products.",
        "",
    ]
    lines += scoring_settings_table(scoring)
    lines += [
        "",
        "The timed rounds are steady state, after one untimed round of every setting that follows all the "
        "set-ups (a later int8-static copy's compile resets torch's compiled-code caches, so the copy set up "
        "first compiles once more there; one scorer alone does not); the set-up column is each setting's construction plus its first call "
        "(int8-static calibrates on the gallery, exports, quantises, then compiles its layer stack on the first "
        "call, once per sequence shape with static shapes), which is what a short evaluation pays on top; its CPU time "
        "includes the C++ compiler's child processes.",
        "",
        "## C. Exhaustive evaluation of a trained checkpoint, with the recall it costs",
        "",
    ]
    if args.no_demo:
        lines.append("Not run (--no-demo).")
    elif demo is None:
        lines.append(
            f"Not run: no checkpoint at `{args.checkpoint}` (run `make demo` first, or pass --checkpoint)."
        )
    else:
        pairs = demo["captions"] * demo["images"]
        lines += [
            f"`evaluate_gallery` (mode exhaustive, batch 128) of `{demo['checkpoint']}` split `{demo['split']}` "
            f"({demo['captions']} captions x {demo['images']} images); the defaults' precision `auto` is "
            f"{demo['auto_precision']} on this CPU; int8 weights take fp32 activations. Each row is a whole "
            "`imagebert evaluate`-like run: int8-static's calibration and compiles are inside its time (cold cache "
            "first, then the same run finding the compiled graphs in the cache), and CPU time here includes the "
            "child processes that ended during the run (inductor's C++ compiler).",
            "",
            "| setting | `EvalOptions` | reps | CPU s | CPU spread | wall s | pairs/CPU-s | speed-up (CPU, per round) "
            "| IR R@1 / R@5 / R@10 | TR R@1 / R@5 / R@10 |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in demo["rows"].items():
            ir, tr = r["ir"], r["tr"]
            cpu = statistics.median(r["cpu"])
            lines.append(
                f"| {name} | `{r['kwargs']}` | {len(r['cpu'])} | {cpu:.1f} | {fmt_spread(spread(r['cpu']))} | "
                f"{statistics.median(r['wall']):.1f} | {pairs / cpu:.0f} | {r['speedup']['median']:.3f}x "
                f"({fmt_spread(r['speedup']['spread'])}) | {ir['R@1']:.2f} / {ir['R@5']:.2f} / {ir['R@10']:.2f} | "
                f"{tr['R@1']:.2f} / {tr['R@5']:.2f} / {tr['R@10']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="CI-sized model for parts A and B (seconds)")
    ap.add_argument("--size", action="append", default=[], metavar="FIELD=N", help="override a Sizes field")
    ap.add_argument("--rows", type=int, default=256, help="rows of part A's products")
    ap.add_argument("--gflop-per-rep", type=float, default=8.0, help="part A: products repeated up to this")
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--min-reps", type=int, default=3)
    ap.add_argument("--max-reps", type=int, default=6)
    ap.add_argument("--no-demo", action="store_true", help="skip part C")
    ap.add_argument("--demo-reps", type=int, default=2)
    ap.add_argument("--no-static", action="store_true", help="leave out the int8-static rows (no torchao)")
    add_demo_checkpoint_arguments(ap)
    ap.add_argument("--out", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    one_thread()
    sizes = override_sizes(tiny_sizes() if args.tiny else Sizes(), args.size)
    rates = matmul_rates(sizes, args.rows, min_reps=args.min_reps, max_reps=args.max_reps,
                         gflop_per_rep=args.gflop_per_rep)  # fmt: skip
    with compile_here_and_cold():
        scoring = scoring_comparison(
            sizes, pairs=args.pairs, batch_size=args.batch_size, warmup=1, min_reps=args.min_reps,
            max_reps=args.max_reps, settings=scoring_settings(args), time_setup=True,
        )  # fmt: skip
    with compile_here_and_cold():
        demo = None if args.no_demo else demo_evaluation(args)
    if demo is None and not args.no_demo:
        _log(f"part C skipped: no checkpoint at {args.checkpoint}")
    page = render(argv, sizes, rates, scoring, demo, args)
    report = {"sizes": sizes.__dict__, "matmul": rates, "scoring": scoring, "demo": demo}
    write_outputs(page, report, args.out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
