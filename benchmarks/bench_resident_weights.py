"""Scoring levers on a trained checkpoint (bf16-resident weights, the attention kernel): speed and recall cost.

Evaluates the checkpoint's split exhaustively with the defaults (bf16 autocast over fp32 weights, SDPA attention),
`EvalOptions(weights="bf16")` (a bf16 copy of the encoder resident, fp32 score head), `attention="eager"`
(transformers' eager attention kernel) and both, interleaved, one intra-op thread, process CPU time and wall
time, no score cache. The recall columns decide
whether the setting may become a default: the recipe's numerics stay unless a change is measured not to hurt.

    .venv/bin/python -m benchmarks.bench_resident_weights --checkpoint /work/demo_out/finetune/best \\
        --dataset /work/demo_out/dataset.yaml --out benchmarks/results/resident_weights.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from benchmarks.timing import (
    add_demo_checkpoint_arguments,
    command_line,
    fmt_spread,
    machine_line,
    one_thread,
    spread,
    timed,
    write_outputs,
)

SETTINGS: dict[str, dict[str, str]] = {
    "defaults": {},
    "bf16 weights": {"weights": "bf16"},
    "eager attention": {"attention": "eager"},
    "bf16 weights + eager attention": {"weights": "bf16", "attention": "eager"},
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_demo_checkpoint_arguments(ap)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from imagebert.data import dataset as data_mod
    from imagebert.retrieval.evaluate import (
        EvalOptions,
        evaluate_gallery,
        gallery_from_dataset,
        load_retrieval_model,
    )

    if not (Path(args.checkpoint) / "config.json").is_file():
        print(f"bench_resident_weights: no checkpoint at {args.checkpoint}", file=sys.stderr)
        return 2
    one_thread()
    model, collator = load_retrieval_model(args.checkpoint)
    ds = data_mod.PairDataset(data_mod.load_dataset_spec(args.dataset), split=args.split)
    gallery = gallery_from_dataset(ds)
    rows: dict[str, dict] = {name: {"cpu": [], "wall": []} for name in SETTINGS}
    for rnd in range(args.reps):
        for w in rows:
            opts = EvalOptions(mode="exhaustive", precision="bf16", progress=False, **SETTINGS[w])
            cpu, wall, res = timed(lambda o=opts: evaluate_gallery(model, collator, gallery, "flickr1k", o))
            r = res["flickr1k"]["exhaustive"]
            rows[w]["cpu"].append(cpu)
            rows[w]["wall"].append(wall)
            rows[w]["ir"], rows[w]["tr"] = r["image_retrieval"], r["text_retrieval"]
            print(f"[resident] round {rnd + 1} {w}: {cpu:.1f} CPU-s, IR R@1 {r['image_retrieval']['R@1']:.2f}"
                  f", TR R@1 {r['text_retrieval']['R@1']:.2f}", file=sys.stderr, flush=True)  # fmt: skip
    base = rows["defaults"]["cpu"]
    lines = [
        "# Scoring levers on the demo checkpoint: bf16-resident weights and the attention kernel",
        "",
        command_line("benchmarks.bench_resident_weights", argv),
        "",
        machine_line(),
        "",
        "Written by `benchmarks/bench_resident_weights.py` (do not edit by hand). Exhaustive evaluation "
        f"(`evaluate_gallery`, bf16 autocast, batch 128, fp32 score head) of `{args.checkpoint}` split "
        f"`{args.split}` ({gallery.num_captions} captions x {gallery.num_images} images), interleaved, one thread.",
        "",
        "| setting | `EvalOptions` | reps | CPU s | spread | wall s | pairs/CPU-s | speed-up vs defaults (CPU, per "
        "round) | IR R@1 / R@5 / R@10 | TR R@1 / R@5 / R@10 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    pairs = gallery.num_captions * gallery.num_images
    for w, r in rows.items():
        ir, tr = r["ir"], r["tr"]
        ratios = [a / b for a, b in zip(base, r["cpu"], strict=True)]
        r["speedup"] = {"median": statistics.median(ratios), "spread": spread(ratios)}
        lines.append(
            f"| {w} | `{SETTINGS[w]}` | {len(r['cpu'])} | {statistics.median(r['cpu']):.1f} | "
            f"{fmt_spread(spread(r['cpu']))} | {statistics.median(r['wall']):.1f} | "
            f"{pairs / statistics.median(r['cpu']):.0f} | {r['speedup']['median']:.3f}x "
            f"({fmt_spread(r['speedup']['spread'])}) | {ir['R@1']:.2f} / {ir['R@5']:.2f} / {ir['R@10']:.2f} | "
            f"{tr['R@1']:.2f} / {tr['R@5']:.2f} / {tr['R@10']:.2f} |"
        )
    page = "\n".join(lines) + "\n"
    write_outputs(page, rows, args.out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
