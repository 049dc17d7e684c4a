"""Why ITM sat at chance: the same tiny corpus of detector-like features, one change at a time.

    .venv/bin/python -m experiments.itm_diagnosis        # ~2 min on 2 cores; writes docs/experiments/itm_diagnosis.*

The corpus (`imagebert.demo.detector_features.detector_like_pairs`) has what detector features have: non-negative
values, a component shared by every region ~15x larger than the content. Each variant runs the real pre-training
driver (warm-up + linear decay, AdamW) with a 2-layer BERT of hidden 64 on the real WordPiece vocabulary.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from experiments.common import DOCS, machine, pretrain_in_memory, tiny_bert
from imagebert.demo.detector_features import detector_like_pairs

TOPICS = ["dog", "cat", "man", "woman", "ball", "car", "tree", "boat", "horse", "bird", "chair"]
PAPER = [
    "model.region_feature_norm=none",
    "model.region_embedding_layernorm=false",
    "model.itm_match_features=false",
]
ONLY_ITM = ["tasks.mlm=false", "tasks.moc=false", "tasks.mrfr=false"]
VARIANTS = {
    "paper: raw features, no LayerNorm, pooler head (4 tasks)": PAPER,
    "+ standardised features and per-projection LayerNorm": PAPER[2:],
    "+ ITM readout with the text x image product": [],
    "+ ITC as a fifth task (the library default recipe)": ["tasks.itc=true"],
    "the default recipe on raw features (no standardisation, no region LayerNorm)": PAPER[:2]
    + ["tasks.itc=true"],
    "paper, ITM alone": PAPER + ONLY_ITM,
    "standardised + product readout, ITM alone": ONLY_ITM,
}
STEPS = 800


def main() -> None:
    torch.set_num_threads(1)
    data = detector_like_pairs(TOPICS, num_images=60, dim=64)
    rows, curves = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        bert = tiny_bert(Path(tmp) / "bert")
        for k, (name, extra) in enumerate(VARIANTS.items()):
            t0 = time.perf_counter()
            common = [f"stages.0.steps={STEPS}", "training.batch_size=16", "training.learning_rate=1e-3",
                      "training.warmup_ratio=0.05", "training.log_every=10", "training.progress_bar=false",
                      "training.tensorboard=false", "training.checkpoint_every=0", "training.chance_warning_steps=0",
                      "model.max_regions=10", "model.max_text_tokens=16"]  # fmt: skip
            records = pretrain_in_memory([data], Path(tmp) / f"v{k}", bert, common + extra)
            curves[name] = ([r["step"] for r in records], [r["loss_itm"] for r in records])
            last = records[-5:]
            rows.append((name, np.mean([r["loss_itm"] for r in last]), np.mean([r["itm_acc"] for r in last]),
                         _first_below(records, 0.6), time.perf_counter() - t0))  # fmt: skip
            print(f"{name}: ITM {rows[-1][1]:.3f}, acc {rows[-1][2]:.3f}", flush=True)
    _write(rows, curves)


def _first_below(records: list[dict], level: float) -> str:
    for r in records:
        if r["loss_itm"] < level:
            return str(r["step"])
    return f"never (in {STEPS})"


def _write(rows: list[tuple], curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    DOCS.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, (xs, ys) in curves.items():
        ax.plot(xs, ys, label=name)
    ax.axhline(np.log(2), color="gray", linestyle="--", linewidth=1, label="chance (ln 2)")
    ax.set_xlabel("step")
    ax.set_ylabel("ITM loss (logged step)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(DOCS / "itm_diagnosis.png", dpi=90)
    plt.close(fig)
    lines = [
        "# ITM diagnosis (tiny corpus of detector-like features)",
        "",
        f"`python -m experiments.itm_diagnosis` on {machine()}; {STEPS} steps of batch 16, lr 1e-3, warm-up 5% then "
        "linear decay; ITM loss and accuracy averaged over the last 5 logged steps (chance: 0.693 / 0.5).",
        "",
        "| variant | ITM loss | ITM accuracy | first logged step below 0.6 | wall s |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {loss:.3f} | {acc:.3f} | {first} | {sec:.0f} |" for n, loss, acc, first, sec in rows]
    lines += ["", "![ITM loss per variant](itm_diagnosis.png)", ""]
    (DOCS / "itm_diagnosis.md").write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
