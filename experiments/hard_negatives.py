"""Fine-tuning with and without mined hard negatives, from the same pre-trained checkpoint, validation curves.

    .venv/bin/python -m experiments.hard_negatives --demo-out demo_out      # the demo's dataset and checkpoint

Runs configs/finetune/demo_cpu.yaml twice (random negatives; mining after a warm-up, from the ITC first stage,
sampled by similarity) and writes docs/experiments/hard_negatives.{md,png} with the gallery validation (every
pair of 50 val images x their captions) at each checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiments.ablation import _configs
from experiments.common import DOCS, machine

VARIANTS = {
    "random negatives": [],
    "mined after step {start} (ITC scores, sampled at T={temp})": [
        "negatives.hard=true", "negatives.hard_start_step={start}", "negatives.hard_source=itc",
        "negatives.hard_temperature={temp}",
    ],
}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    from imagebert.tasks.retrieval import load_finetune_config, run_finetuning

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo-out", default="demo_out")
    ap.add_argument("--out", default="hard_negatives_out")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--every", type=int, default=30, help="validate every this many steps")
    ap.add_argument("--start", type=int, default=40, help="mining starts at this step")
    ap.add_argument("--temperature", type=float, default=0.05)
    args = ap.parse_args(argv)
    demo = Path(args.demo_out).resolve()
    init = sorted((demo / "pretrain").glob("*/final"))[-1]
    curves = {}
    for k, (label, extra) in enumerate(VARIANTS.items()):
        label = label.format(start=args.start, temp=args.temperature)
        run = Path(args.out).resolve() / f"v{k}"
        if not (run / "validation.jsonl").is_file() or not (run / "final").exists():
            overrides = [f"dataset={demo / 'dataset.yaml'}", f"init_checkpoint={init}", f"training.steps={args.steps}",
                         f"training.checkpoint_every={args.every}", "training.batch_size=16",
                         "training.precision=bf16", "training.progress_bar=false",
                         *[e.format(start=args.start, temp=args.temperature) for e in extra]]  # fmt: skip
            cfg = load_finetune_config(_configs() / "finetune" / "demo_cpu.yaml", overrides)
            run_finetuning(cfg, out_dir=run)
        curves[label] = [json.loads(line) for line in (run / "validation.jsonl").read_text().splitlines()]
    _write(curves, args)


def _write(curves: dict[str, list[dict]], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    DOCS.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label, recs in curves.items():
        steps = [r["step"] for r in recs]
        axes[0].plot(steps, [r["val_ir_r1"] for r in recs], marker="o", label=label)
        axes[1].plot(steps, [r["val_tr_r1"] for r in recs], marker="o", label=label)
    for ax, title in zip(axes, ("validation IR R@1", "validation TR R@1"), strict=True):
        ax.axvline(args.start, color="gray", linestyle=":", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(DOCS / "hard_negatives.png", dpi=90)
    plt.close(fig)
    lines = ["# Hard negatives after a warm-up", "",
             f"`python -m experiments.hard_negatives --steps {args.steps} --every {args.every} --start {args.start} "
             f"--temperature {args.temperature}` on {machine()}; both runs start from the demo's pre-trained "
             "checkpoint with configs/finetune/demo_cpu.yaml. Validation: every pair of 50 val images x their "
             "captions (R@1 in %).", "", "| run | " + " | ".join(f"step {r['step']}" for r in next(iter(curves.values())))
             + " |", "|---|" + "---|" * len(next(iter(curves.values())))]  # fmt: skip
    for label, recs in curves.items():
        cells = [f"IR {r['val_ir_r1']:.1f} / TR {r['val_tr_r1']:.1f}" for r in recs]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "![validation curves](hard_negatives.png)", ""]
    (DOCS / "hard_negatives.md").write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
