"""Table 4 in the spirit of the paper, on the demo corpus: each pre-training task off in turn, one stage against
two (a noisy first stage), and no pre-training, each followed by the same fine-tuning.

    .venv/bin/python -m experiments.ablation --demo-out demo_out      # reuses the demo's corpus and features

Budget per variant (set by flags): pre-training --pretrain-steps, fine-tuning --finetune-steps, exhaustive
evaluation of zero-shot and fine-tuned R@1 on the test split. Writes docs/experiments/ablation.md.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from experiments.common import DOCS, machine

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "imagebert" / "configs"


def _configs() -> Path:
    if CONFIGS.is_dir():
        return CONFIGS
    return Path(__file__).resolve().parents[1] / "configs"


VARIANTS = {
    "full recipe (4 tasks + ITC)": [],
    "without MLM": ["tasks.mlm=false"],
    "without MOC": ["tasks.moc=false"],
    "without MRFR": ["tasks.mrfr=false"],
    "without ITM": ["tasks.itm=false"],
    "random ITM negatives only (no in-batch ITC-drawn ones)": ["itm.itc_negative_fraction=0"],
    "without ITC (the paper's four tasks)": ["tasks.itc=false", "itm.itc_negative_fraction=0"],
}


def noisy_dataset(dataset_yaml: Path, out: Path, fraction: float = 0.3, seed: int = 0) -> Path:
    """The same dataset with `fraction` of each training caption's words replaced by random vocabulary words:
    the 'noisy web data' first stage."""
    import yaml

    from imagebert.data.captions import read_karpathy_json

    spec = yaml.safe_load(dataset_yaml.read_text(encoding="utf-8"))
    src = Path(spec["captions"][0]["path"])
    data = json.loads(src.read_text(encoding="utf-8"))
    vocab = sorted({w for im in data["images"] for s in im["sentences"] for w in s["raw"].lower().split()})
    rng = random.Random(seed)
    for im in data["images"]:
        if im.get("split") != "train":
            continue
        for s in im["sentences"]:
            words = s["raw"].split()
            for i in range(len(words)):
                if rng.random() < fraction:
                    words[i] = rng.choice(vocab)
            s["raw"] = " ".join(words)
            s["tokens"] = [w.lower() for w in words]
    out.mkdir(parents=True, exist_ok=True)
    noisy = out / "captions_noisy.json"
    noisy.write_text(json.dumps(data), encoding="utf-8")
    read_karpathy_json(noisy, dataset=spec["captions"][0].get("dataset", "flickr30k"))  # it must still parse
    spec["captions"][0]["path"] = str(noisy)
    spec["name"] = spec.get("name", "demo") + "-noisy"
    path = out / "dataset_noisy.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def small_test_dataset(dataset_yaml: Path, out: Path, test_images: int) -> Path:
    """The same dataset with only the first `test_images` test images (train and val unchanged), so that each of
    the many evaluations of the ablation costs test_images x 5 test_images pairs instead of the full split."""
    import yaml

    spec = yaml.safe_load(dataset_yaml.read_text(encoding="utf-8"))
    src = Path(spec["captions"][0]["path"])
    data = json.loads(src.read_text(encoding="utf-8"))
    kept, n = [], 0
    for im in data["images"]:
        if im.get("split") == "test":
            n += 1
            if n > test_images:
                continue
        kept.append(im)
    data["images"] = kept
    out.mkdir(parents=True, exist_ok=True)
    path = out / "captions_small_test.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    spec["captions"][0]["path"] = str(path)
    yaml_path = out / "dataset_small_test.yaml"
    yaml_path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return yaml_path


def _pretrain(dataset: Path, out: Path, steps: int, extra: list[str], stages: list[tuple[str, Path]]) -> Path:
    from imagebert.tasks.pretraining import load_pretrain_config, run_pretraining

    overrides = [f"stages.0.datasets=[{stages[0][1]}]", f"stages.0.steps={steps}", "training.batch_size=32",
                 "training.progress_bar=false", "training.tensorboard=false", "training.checkpoint_every=0",
                 *extra]  # fmt: skip
    cfg = load_pretrain_config(_configs() / "pretrain" / "demo_cpu.yaml", overrides)
    if len(stages) > 1:
        import dataclasses

        second = dataclasses.replace(cfg.stages[0], name=stages[1][0], datasets=[str(stages[1][1])])
        cfg.stages[0].name = stages[0][0]
        cfg.stages.append(second)
    return Path(run_pretraining(cfg, out_dir=out))


def _finetune(dataset: Path, init: Path | None, out: Path, steps: int) -> Path:
    from imagebert.tasks.retrieval import load_finetune_config, run_finetuning

    overrides = [f"dataset={dataset}", f"training.steps={steps}", "training.batch_size=16",
                 "training.precision=bf16", "training.checkpoint_every=0", "validation=null"]  # fmt: skip
    if init is not None:
        overrides.append(f"init_checkpoint={init}")
    cfg = load_finetune_config(_configs() / "finetune" / "demo_cpu.yaml", overrides)
    return Path(run_finetuning(cfg, out_dir=out))


def _recall(checkpoint: Path, dataset: Path, out: Path) -> dict[str, float]:
    from imagebert.retrieval.evaluate import EvalOptions, evaluate_checkpoint

    report = evaluate_checkpoint(checkpoint, dataset, split="test", protocol="flickr1k", out_dir=out,
                                 options=EvalOptions(mode="exhaustive", precision="bf16", batch_size=256))  # fmt: skip
    res = report["results"]["flickr1k"]["exhaustive"]
    return {"ir_r1": float(res["image_retrieval"]["R@1"]), "tr_r1": float(res["text_retrieval"]["R@1"])}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo-out", default="demo_out", help="a finished `imagebert demo` folder")
    ap.add_argument("--out", default="ablation_out")
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--finetune-steps", type=int, default=100)
    ap.add_argument("--test-images", type=int, default=50, help="evaluate on the first N test images")
    ap.add_argument("--only", nargs="*", default=None, help="run only these variant numbers (0-based)")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    dataset = small_test_dataset(
        Path(args.demo_out).resolve() / "dataset.yaml", out / "data", args.test_images
    )
    noisy = noisy_dataset(dataset, out / "noisy")
    plan: list[tuple[str, list[str], list[tuple[str, Path]] | None]] = [
        (name, extra, [("demo", dataset)]) for name, extra in VARIANTS.items()
    ]
    plan.append(("two stages: 30%-noisy captions, then clean (half the steps each)", [],
                 [("noisy", noisy), ("clean", dataset)]))  # fmt: skip
    plan.append(("no pre-training (fine-tuning from MiniLM)", [], None))
    results_file = out / "results.jsonl"
    done = {}
    if results_file.is_file():
        rows = [json.loads(line) for line in results_file.read_text().splitlines() if line]
        done = {r["variant"]: r for r in rows}
    for k, (name, extra, stages) in enumerate(plan):
        if name in done or (args.only is not None and str(k) not in args.only):
            continue
        t0 = time.perf_counter()
        run = out / f"v{k}"
        row: dict = {"variant": name}
        if stages is None:
            tuned = _finetune(dataset, None, run / "finetune", args.finetune_steps)
            row["zero_shot"] = None
        else:
            steps = args.pretrain_steps if len(stages) == 1 else args.pretrain_steps // 2
            pre = _pretrain(dataset, run / "pretrain", steps, extra, stages)
            row["zero_shot"] = _recall(pre, dataset, run / "eval_zero")
            tuned = _finetune(dataset, pre, run / "finetune", args.finetune_steps)
        row["fine_tuned"] = _recall(tuned, dataset, run / "eval_tuned")
        row["seconds"] = time.perf_counter() - t0
        row["torch_threads"] = torch.get_num_threads()
        with open(results_file, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        done[name] = row
        print(json.dumps(row), flush=True)
    _write(plan, done, args)


def _write(plan: list, done: dict, args: argparse.Namespace) -> None:
    DOCS.mkdir(parents=True, exist_ok=True)
    lines = ["# Pre-training ablation on the demo corpus", "",
             f"`python -m experiments.ablation --pretrain-steps {args.pretrain_steps} --finetune-steps "
             f"{args.finetune_steps}` on {machine(threads=False)} (threads per run in the table): configs/pretrain/demo_cpu.yaml and configs/finetune/demo_cpu.yaml "
             f"(MiniLM, batch 32 / 16, bf16), the first {args.test_images} images of the demo's test split with their "
             "captions, exhaustive R@1 in %.",
             "", "| variant | zero-shot IR R@1 | zero-shot TR R@1 | fine-tuned IR R@1 | fine-tuned TR R@1 | wall s "
             "| torch threads |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, _, _ in plan:
        row = done.get(name)
        if row is None:
            lines.append(f"| {name} | not run | | | | | |")
            continue
        z = row["zero_shot"] or {"ir_r1": float("nan"), "tr_r1": float("nan")}
        f = row["fine_tuned"]
        zs = "-" if row["zero_shot"] is None else f"{z['ir_r1']:.1f}"
        zt = "-" if row["zero_shot"] is None else f"{z['tr_r1']:.1f}"
        lines.append(
            f"| {name} | {zs} | {zt} | {f['ir_r1']:.1f} | {f['tr_r1']:.1f} | {row['seconds']:.0f} "
            f"| {row.get('torch_threads', '?')} |"
        )
    (DOCS / "ablation.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
