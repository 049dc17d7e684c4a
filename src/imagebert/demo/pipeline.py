"""`make demo`: the whole method on the built-in corpus, through the same code paths real datasets take.

corpus (rendered scenes, Karpathy JSON, COCO-style boxes) -> `extract` (EfficientNet-Lite0 + RoIAlign) -> feature
store -> dataset YAML -> pre-training (MLM, MOC, MRFR, ITM from the real MiniLM text encoder) -> zero-shot
evaluation -> fine-tuning (BCE, random negatives both ways) -> evaluation -> report.md with figures.

Every step writes into `out_dir` and is skipped when its output is already there, so an interrupted demo resumes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

if TYPE_CHECKING:
    from imagebert.tasks.pretraining import PretrainConfig
    from imagebert.tasks.retrieval import FinetuneConfig

PACKAGE_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class DemoSettings:
    """Sizes chosen so the whole demo fits in about 20 minutes on a 2-core CPU (see the report's last section)."""

    num_train: int = 1000
    num_val: int = 100
    num_test: int = 100
    seed: int = 0
    image_size: int = 256
    extract_size: int = 384  # letterbox side for the backbone: a 12 x 12 map at stride 32
    pretrain_steps: int = 800  # at 400 the demo used 13 of its 20 minutes: more recall per second here
    pretrain_batch: int = 32
    finetune_steps: int = 150
    finetune_batch: int = 16
    # "auto" (the demo's own rule, resolved before the first step and written in the report): bf16 where the
    # machine has bf16 kernels (CUDA, or a CPU with AVX-512 / AMX), fp32 on an AVX2-only CPU, where torch
    # emulates bf16 many times slower than fp32 (benchmarks/bench_bf16_cpu.py); the rule of
    # `resolve_precision("auto")`, so fp16 on a GPU without bf16. Name a precision to pin it.
    eval_precision: str = "auto"
    train_precision: str = "auto"
    examples: int = 3
    extract_bf16: bool | None = None  # None: bf16 where the CPU has bf16 kernels (about 2x faster there)
    fast_ks: tuple[int, ...] = (8, 16, 32)  # fast mode on the fine-tuned checkpoint, beside exhaustive
    # The second corpus: the same scenes as detector-like 2048-d features (LXMERT TSV -> `features import`),
    # trained with the same recipe; 0 steps skips it.
    detector_pretrain_steps: int = 300
    detector_finetune_steps: int = 60
    detector_zero_shot: bool = False  # also evaluate its pre-trained checkpoint (about 75 s more)

    def validate(self) -> None:
        """Reject nonsense sizes before the corpus is built (minutes of work): ConfigError naming the key."""
        from imagebert.config_utils import ConfigError

        minimum = {"num_train": 2, "num_val": 1, "num_test": 2, "image_size": 32, "extract_size": 32,
                   "pretrain_steps": 1, "pretrain_batch": 1, "finetune_steps": 1, "finetune_batch": 1,
                   "examples": 0, "seed": 0}  # fmt: skip
        for key, low in minimum.items():
            value = getattr(self, key, None)
            if value is not None and value < low:
                raise ConfigError(f"{key} must be >= {low}, got {value}")
        if getattr(self, "extract_size", 32) % 32:
            raise ConfigError(f"extract_size must be a multiple of 32, got {self.extract_size}")
        for key, allowed in (("eval_precision", ("auto", "fp32", "bf16", "fp16")),
                             ("train_precision", ("auto", "fp32", "bf16", "fp16"))):  # fmt: skip
            value = getattr(self, key, None)
            if value is not None and value not in allowed:
                raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")


def _configs_dir() -> Path:
    if not PACKAGE_CONFIGS.is_dir():
        raise FileNotFoundError(
            f"{PACKAGE_CONFIGS}: the shipped configs are missing from this install of imagebert; reinstall it"
        )
    return PACKAGE_CONFIGS


def _chance_recall(num_images: int, captions_per_image: float, ks=(1, 5, 10)) -> dict[str, float]:
    """Expected R@K of a random ranking: IR = K/N; TR = 1 - C(M-c, K)/C(M, K) with M captions, c per image."""
    m = int(round(num_images * captions_per_image))
    c = int(round(captions_per_image))
    out = {}
    for k in ks:
        out[f"ir_r{k}"] = 100.0 * min(1.0, k / num_images)
        miss = 1.0
        for j in range(k):
            miss *= max(0.0, (m - c - j) / (m - j))
        out[f"tr_r{k}"] = 100.0 * (1.0 - miss)
    return out


def run_demo(
    out_dir: str | Path = "demo_out",
    settings: DemoSettings | None = None,
    *,
    bert_path: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Run every step; returns the path of report.md."""
    from imagebert.demo.corpus import build_demo_corpus

    s, precision_note = resolve_machine_settings(settings or DemoSettings())
    log(f"[demo] {precision_note}")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def step(name: str):
        log(f"[demo] {name} ...")
        return _Timer(timings, name)

    with step("corpus"):
        corpus = build_demo_corpus(
            out / "corpus", s.num_train, s.num_val, s.num_test, s.seed, image_size=s.image_size
        )
    with step("extract"):
        store = _extract(corpus, out / "features", s, log)
    dataset_yaml = _write_dataset_yaml(out, corpus, store)
    with step("pretrain"):
        pretrained = _pretrain(out, dataset_yaml, s, bert_path)
    with step("evaluate zero-shot"):
        zero = _evaluate(pretrained, dataset_yaml, out / "eval_zeroshot", s, "zero-shot")
    with step("finetune"):
        finetuned = _finetune(out, dataset_yaml, pretrained, s)
    with step("evaluate fine-tuned"):
        tuned = _evaluate(finetuned, dataset_yaml, out / "eval_finetuned", s, "fine-tuned", fast=True)
    detector: dict[str, Any] | None = None
    if s.detector_pretrain_steps > 0:
        det = out / "detector"
        with step("detector corpus: features"):
            det_yaml = _detector_dataset(out, corpus, det)
        with step("detector corpus: pretrain"):
            det_pre = _pretrain(det, det_yaml, s, bert_path, steps=s.detector_pretrain_steps)
        det_zero = None
        if s.detector_zero_shot:
            with step("detector corpus: evaluate zero-shot"):
                det_zero = _evaluate(det_pre, det_yaml, det / "eval_zeroshot", s, "zero-shot")
        with step("detector corpus: finetune"):
            det_tuned_ckpt = _finetune(det, det_yaml, det_pre, s, steps=s.detector_finetune_steps)
        with step("detector corpus: evaluate fine-tuned"):
            det_tuned = _evaluate(det_tuned_ckpt, det_yaml, det / "eval_finetuned", s, "fine-tuned")
        detector = {"zero": det_zero, "tuned": det_tuned, "dir": det}
    with step("report"):
        report = _write_report(out, corpus, dataset_yaml, zero, tuned, s, timings, detector, precision_note)
    log(f"[demo] report: {report}")
    return report


def resolve_machine_settings(s: DemoSettings) -> tuple[DemoSettings, str]:
    """The settings with every "auto" precision replaced by what this machine runs well, and a sentence saying
    what was chosen and why. The trainer and the report then see explicit names only."""
    import torch

    from imagebert.runtime.distributed import resolve_device
    from imagebert.runtime.precision import resolve_precision

    dtype = resolve_precision("auto", resolve_device("auto"))  # the project's one "auto" rule
    native = dtype is torch.bfloat16
    auto = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
    chosen = dataclasses.replace(
        s,
        train_precision=auto if s.train_precision == "auto" else s.train_precision,
        eval_precision=auto if s.eval_precision == "auto" else s.eval_precision,
        extract_bf16=native if s.extract_bf16 is None else s.extract_bf16,
    )
    if chosen == s:
        return chosen, "precisions as set"
    why = {
        "bf16": "this machine has bf16 kernels",
        "fp16": "this GPU has no bf16",
        "fp32": "this CPU has no bf16 kernels, so bf16 would be emulated",
    }[auto]
    return chosen, (
        f"precision auto -> training {chosen.train_precision}, evaluation {chosen.eval_precision}, extraction "
        f"{'bf16' if chosen.extract_bf16 else 'fp32'} ({why})"
    )


class _Timer:
    def __init__(self, timings: dict[str, float], name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.timings[self.name] = time.perf_counter() - self.t0


# ---------------------------------------------------------------------------------------------- steps


def _extract(corpus: Any, store: Path, s: DemoSettings, log: Callable[[str], None]) -> Path:
    from imagebert.extraction.extract import ExtractionConfig, extract

    cfg = ExtractionConfig(image_size=s.extract_size, batch_size=16, bf16=s.extract_bf16, progress=True)
    report = extract(corpus.images_dir, store, cfg, boxes=corpus.boxes_json)
    log(f"[demo] extraction: {report.summary()}")
    if report.rejected:
        raise RuntimeError(f"extraction rejected {report.rejected} demo images: {report.rejects[:3]}")
    return store


def _detector_dataset(out: Path, corpus: Any, det: Path) -> Path:
    """The scenes as detector-like features: LXMERT TSV, imported by the real `imagebert features import`."""
    from imagebert.cli import main as cli_main
    from imagebert.demo.detector_features import write_detector_tsv

    store = det / "features"
    if not (store / "data.mdb").is_file() or not _store_complete(store):
        tsv = write_detector_tsv(corpus.boxes_json, det / "features.tsv", seed=0)
        args = ["features", "import", "--format", "lxmert-tsv", "--out", str(store), str(tsv)]
        if store.exists():
            args.append("--resume")
        code = cli_main(args)
        if code:
            raise RuntimeError(f"imagebert features import failed with exit code {code}")
    return _write_dataset_yaml(det, corpus, store)


def _store_complete(store: Path) -> bool:
    from imagebert.data.store import FeatureStore

    try:
        FeatureStore(store)
    except Exception:  # incomplete or unreadable: import (again)
        return False
    return True


def _write_dataset_yaml(out: Path, corpus: Any, store: Path) -> Path:
    spec = {
        "name": "demo",
        "feature_store": str(store),
        "captions": [
            {
                "path": str(corpus.karpathy_json),
                "format": "karpathy",
                "dataset": "flickr30k",
                "image_id": "stem",
            }
        ],
        "missing_images": "error",
    }
    path = out / "dataset.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def _absolute(path: str | Path) -> str:
    return os.path.normpath(Path(path).expanduser().absolute())


def demo_pretrain_config(
    dataset_yaml: str | Path, s: DemoSettings, bert_path: str | Path | None = None, steps: int | None = None
) -> PretrainConfig:
    """The shipped `pretrain/demo_cpu.yaml` as a typed PretrainConfig with the demo's dataset, sizes and
    precision set on its fields, validated (paths included)."""
    from imagebert.tasks.pretraining import load_pretrain_config

    cfg = load_pretrain_config(_configs_dir() / "pretrain" / "demo_cpu.yaml", check_paths=False)
    stage = cfg.stages[0]
    stage.datasets = [_absolute(dataset_yaml)]
    stage.steps = steps or s.pretrain_steps
    cfg.training.batch_size = s.pretrain_batch
    cfg.training.precision = resolve_machine_settings(s)[0].train_precision  # type: ignore[assignment]
    cfg.training.progress_bar = True
    if bert_path is not None:
        cfg.init_from_bert = _absolute(bert_path)
    cfg.validate()
    return cfg


def _pretrain(
    out: Path, dataset_yaml: Path, s: DemoSettings, bert_path: str | Path | None, steps: int | None = None
) -> Path:
    from imagebert.tasks.pretraining import run_pretraining

    run_dir = out / "pretrain"
    cfg = demo_pretrain_config(dataset_yaml, s, bert_path, steps=steps)
    final = _final_checkpoint(run_dir)
    if final is not None:
        return final
    return Path(run_pretraining(cfg, out_dir=run_dir, resume=run_dir if run_dir.exists() else None))


def _final_checkpoint(run_dir: Path) -> Path | None:
    finals = sorted(run_dir.glob("*/final")) if run_dir.is_dir() else []
    return finals[-1] if finals and (finals[-1] / "config.json").is_file() else None


def _finetune(
    out: Path, dataset_yaml: Path, pretrained: Path, s: DemoSettings, steps: int | None = None
) -> Path:
    from imagebert.tasks.retrieval import run_finetuning

    run_dir = out / "finetune"
    best = run_dir / "best"
    if (best / "config.json").is_file() and (run_dir / "final").exists():
        return best
    cfg = demo_finetune_config(dataset_yaml, pretrained, s, steps=steps)
    return Path(run_finetuning(cfg, out_dir=run_dir))


def demo_finetune_config(
    dataset_yaml: str | Path, pretrained: str | Path, s: DemoSettings, steps: int | None = None
) -> FinetuneConfig:
    """The shipped `finetune/demo_cpu.yaml` as a typed FinetuneConfig starting from `pretrained`, with the
    demo's dataset, sizes and precision set on its fields, validated."""
    from imagebert.tasks.retrieval import load_finetune_config

    cfg = load_finetune_config(_configs_dir() / "finetune" / "demo_cpu.yaml")
    cfg.dataset = str(Path(dataset_yaml).expanduser().absolute())
    cfg.init_checkpoint = str(Path(pretrained).expanduser().absolute())
    cfg.training.steps = steps or s.finetune_steps
    cfg.training.batch_size = s.finetune_batch
    cfg.training.precision = resolve_machine_settings(s)[0].train_precision  # type: ignore[assignment]
    cfg.validate()
    return cfg


def _evaluate(
    checkpoint: Path, dataset_yaml: Path, out: Path, s: DemoSettings, setting: str, fast: bool = False
) -> dict[str, Any]:
    from imagebert.retrieval.evaluate import EvalOptions, evaluate_checkpoint

    mode = "both" if fast and s.fast_ks else "exhaustive"
    opts = EvalOptions(mode=mode, ks_fast=list(s.fast_ks), precision=s.eval_precision, batch_size=256)
    report = evaluate_checkpoint(
        checkpoint,
        dataset_yaml,
        split="test",
        protocol="flickr1k",
        out_dir=out,
        options=opts,
        setting=setting,
    )
    matrices = sorted((out / "score_cache").rglob("scores.npy"))
    report["_scores_path"] = str(matrices[0]) if matrices else None
    return report


# ---------------------------------------------------------------------------------------------- report


def _test_gallery(dataset_yaml: Path) -> tuple[list[str], list[str], np.ndarray, Any]:
    from imagebert.data.dataset import PairDataset, load_dataset_spec
    from imagebert.retrieval.evaluate import gallery_from_dataset

    ds = PairDataset(load_dataset_spec(dataset_yaml), split="test")
    g = gallery_from_dataset(ds)
    return list(g.texts), list(g.image_ids), np.asarray(g.caption_image), ds


def _recall_row(result: dict[str, Any]) -> dict[str, float]:
    res = result["results"]["flickr1k"]["exhaustive"]
    return {k: float(v) for k, v in _flat_recall(res).items()}


def _flat_recall(res: dict[str, Any]) -> dict[str, float]:
    """A RecallResult dict ({"image_retrieval": {"R@1": ..}, "text_retrieval": {...}}) as {"ir_r1": .., ...}."""
    out: dict[str, float] = {}
    for direction, short in (("image_retrieval", "ir"), ("text_retrieval", "tr")):
        for key, value in res[direction].items():
            out[f"{short}_r{int(str(key).removeprefix('R@'))}"] = float(value)
    return out


def _write_report(
    out: Path,
    corpus: Any,
    dataset_yaml: Path,
    zero: dict[str, Any],
    tuned: dict[str, Any],
    s: DemoSettings,
    timings: dict[str, float],
    detector: dict[str, Any] | None = None,
    precision_note: str = "",
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from imagebert.demo.baselines import bag_of_words_scores, demo_image_terms
    from imagebert.retrieval.metrics import recall_at_k

    texts, image_ids, caption_image, _ = _test_gallery(dataset_yaml)
    terms = demo_image_terms(corpus.boxes_json)
    bow = bag_of_words_scores(texts, [terms[i] for i in image_ids])
    bow_res = _flat_recall(recall_at_k(bow, caption_image).to_dict())
    rows = {
        "chance": _chance_recall(len(image_ids), len(texts) / len(image_ids)),
        "bag of words (caption words vs true labels)": bow_res,
        "ImageBERT zero-shot (pre-trained ITM head)": _recall_row(zero),
        "ImageBERT fine-tuned (BCE)": _recall_row(tuned),
    }
    if detector is not None:
        if detector["zero"] is not None:
            rows["detector-like features: zero-shot"] = _recall_row(detector["zero"])
        rows["detector-like features: fine-tuned"] = _recall_row(detector["tuned"])
    figs = out / "figures"
    figs.mkdir(exist_ok=True)
    loss_png = _plot_losses(out, figs / "losses.png")
    bars_png = _plot_recall_bars(rows, figs / "recall.png")
    examples = _plot_examples(out, corpus, tuned, texts, image_ids, caption_image, figs, s.examples)

    keys = ["ir_r1", "ir_r5", "ir_r10", "tr_r1", "tr_r5", "tr_r10"]
    lines = [
        "# ImageBERT demo report",
        "",
        f"Built-in corpus of rendered scenes: {s.num_train} train / {s.num_val} val / {s.num_test} test images, "
        "5 captions each. Test gallery: "
        f"{len(image_ids)} images, {len(texts)} captions. Half the images come in distractor pairs that share "
        "every object and colour word but swap a relation or an attribute, so words alone cannot solve them.",
        "",
        "## Summary (test split, R@K in %)",
        "",
        "| method | IR R@1 | IR R@5 | IR R@10 | TR R@1 | TR R@5 | TR R@10 | RSUM |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        vals = [r.get(k, float("nan")) for k in keys]
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in vals) + f" | {sum(vals):.1f} |")
    chance, ft = rows["chance"], rows["ImageBERT fine-tuned (BCE)"]
    lines += [
        "",
        "IR = image retrieval (caption -> image), TR = text retrieval (image -> caption; a hit when any of the "
        "image's 5 captions is in the top K). Ties count against the model.",
        f"Fine-tuned R@1 over chance: IR {ft['ir_r1'] / chance['ir_r1']:.1f}x, TR {ft['tr_r1'] / chance['tr_r1']:.1f}x; "
        f"zero-shot: IR {rows['ImageBERT zero-shot (pre-trained ITM head)']['ir_r1'] / chance['ir_r1']:.1f}x, "
        f"TR {rows['ImageBERT zero-shot (pre-trained ITM head)']['tr_r1'] / chance['tr_r1']:.1f}x.",
        "",
    ]
    if detector is not None:
        lines += [
            "The detector-like rows train the same recipe (configs/pretrain/demo_cpu.yaml, "
            "configs/finetune/demo_cpu.yaml) on the same scenes written as a 2048-d LXMERT TSV with non-negative "
            "features, a strong shared component and norms in the tens (imagebert.demo.detector_features), imported "
            f"with `imagebert features import`; {s.detector_pretrain_steps} pre-training and "
            f"{s.detector_finetune_steps} fine-tuning steps.",
            "",
        ]
    lines += _learning_health_lines(out, detector)
    lines += _fast_mode_lines(tuned)
    lines += [
        "## Loss curves",
        "",
        f"![losses]({loss_png.relative_to(out)})" if loss_png else "(no metrics found)",
        "",
        "## Recall",
        "",
        f"![recall]({bars_png.relative_to(out)})",
        "",
        "## Example queries (fine-tuned model)",
        "",
        "Each row: a test caption and the top-5 retrieved images, the true image framed in green; the regions whose "
        "class the caption names are outlined.",
        "",
    ]
    for caption, png in examples:
        lines += [f"**{caption}**", "", f"![example]({png.relative_to(out)})", ""]
    lines += [
        "## How the demo is sized",
        "",
        f"- Images {s.image_size}px, features from EfficientNet-Lite0 (ImageNet) at {s.extract_size}px with RoIAlign "
        "over the true boxes (1280-d), via `imagebert extract --boxes`.",
        f"- Model: the shipped MiniLM-L6-H384 text encoder (6 layers, hidden 384) + region projections and heads; "
        f"pre-training {s.pretrain_steps} steps of batch {s.pretrain_batch}, fine-tuning {s.finetune_steps} steps "
        f"of batch {s.finetune_batch} ({s.train_precision}); exhaustive evaluation in {s.eval_precision}"
        + (f"; {precision_note}." if precision_note else "."),
        "- Wall time per step on this machine: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        + f" (total {sum(timings.values()) / 60:.1f} min).",
        "",
        "Settings: `" + json.dumps(asdict(s)) + "`",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return path


def _learning_health_lines(out: Path, detector: dict[str, Any] | None) -> list[str]:
    """ITM loss and accuracy over the last logged steps of each pre-training run, and any chance warnings."""
    lines = ["## Learning health (pre-training)", "",
             "| run | ITM loss, last 5 logging windows | ITM loss, random negatives only | "
             "ITM accuracy, last 5 logging windows | warnings |",
             "|---|---|---|---|---|"]  # fmt: skip
    runs = [("EfficientNet features", out / "pretrain")]
    if detector is not None:
        runs.append(("detector-like features", detector["dir"] / "pretrain"))
    for name, run in runs:
        records = [r for p in sorted(run.rglob("metrics.jsonl")) for r in _read_metrics(p)]
        last = [r for r in records if "loss_itm" in r][-5:]
        warnings = []
        for h in sorted(run.rglob("health.json")):
            for w in json.loads(h.read_text(encoding="utf-8")).get("warnings", []):
                warnings.append(f"{w['task']} at chance until step {w['last_step_at_chance']}")
        if not last:
            continue
        # each record's window mean (`*_avg`: every step since the previous record), else its own step
        loss = sum(r.get("loss_itm_avg", r["loss_itm"]) for r in last) / len(last)
        acc = sum(r.get("itm_acc_avg", r.get("itm_acc", float("nan"))) for r in last) / len(last)
        plain = [r.get("loss_itm_random_avg", r.get("loss_itm_random")) for r in last]
        plain_text = f"{sum(plain) / len(plain):.3f}" if None not in plain else "(all random)"
        lines.append(f"| {name} | {loss:.3f} | {plain_text} | {acc:.3f} | {'; '.join(warnings) or 'none'} |")
    lines += ["", "Each logging window averages every step since the previous record (`training.log_every`, 10: "
              "the last 50 steps). Chance is ln 2 = 0.693 (half the pairs are negatives). With in-batch negatives "
              "(`itm.itc_negative_fraction`) the first loss mixes them with the random ones; the second is the "
              "paper's ITM: the positives against the random negatives only. A warning names a task "
              "whose loss stayed within 3% of chance for 100 steps (`training.chance_warning_steps`).", ""]  # fmt: skip
    return lines


def _fast_mode_lines(tuned: dict[str, Any]) -> list[str]:
    """Fast (contrastive first stage + cross-encoder re-rank of the top k) against exhaustive, measured."""
    res = tuned.get("results", {}).get("flickr1k", {})
    if "exhaustive" not in res or not any(k.startswith("fast") for k in res):
        return []
    ex = res["exhaustive"]
    exr = _flat_recall(ex)
    lines = ["## Fast mode against exhaustive (fine-tuned checkpoint, test split)", "",
             "| mode | cross-encoder pairs | wall s | IR R@1 | TR R@1 | IR R@1 lost | TR R@1 lost |",
             "|---|---|---|---|---|---|---|",
             f"| exhaustive | {ex['cross_encoder_pairs']} | {ex['seconds']:.1f} | {exr['ir_r1']:.1f} | "
             f"{exr['tr_r1']:.1f} | - | - |"]  # fmt: skip
    for label, r in res.items():
        if not label.startswith("fast"):
            continue
        fr = _flat_recall(r)
        lines.append(
            f"| {label} | {r['cross_encoder_pairs']} ({ex['cross_encoder_pairs'] / max(r['cross_encoder_pairs'], 1):.1f}x "
            f"fewer) | {r['seconds']:.1f} ({ex['seconds'] / max(r['seconds'], 1e-9):.1f}x less) | {fr['ir_r1']:.1f} | "
            f"{fr['tr_r1']:.1f} | {exr['ir_r1'] - fr['ir_r1']:.1f} | {exr['tr_r1'] - fr['tr_r1']:.1f} |"
        )
    return lines + [""]


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _plot_losses(out: Path, png: Path) -> Path | None:
    import matplotlib.pyplot as plt

    runs = [
        ("pre-training", sorted((out / "pretrain").rglob("metrics.jsonl"))),
        ("fine-tuning", sorted((out / "finetune").rglob("metrics.jsonl"))),
    ]
    panels = [(title, [r for p in paths for r in _read_metrics(p)]) for title, paths in runs]
    panels = [(t, recs) for t, recs in panels if recs]
    if not panels:
        return None
    accuracy = [r for r in panels[0][1] if "itm_acc" in r] if panels[0][0] == "pre-training" else []
    width = len(panels) + bool(accuracy)
    fig, axes = plt.subplots(1, width, figsize=(6 * width, 4), squeeze=False)
    if accuracy:
        ax = axes[0][-1]
        ax.plot([r["step"] for r in accuracy], [r["itm_acc"] for r in accuracy], label="itm_acc")
        ax.axhline(0.5, color="gray", linestyle="--", linewidth=1, label="chance")
        ax.set_title("pre-training ITM accuracy")
        ax.set_xlabel("step")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    for ax, (title, records) in zip(axes[0], panels):
        keys = sorted({k for r in records for k in r if _is_loss_key(k)})
        for key in keys:
            pts = [(r["step"], r[key]) for r in records if key in r and "step" in r and _finite(r[key])]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def _is_loss_key(key: str) -> bool:
    return "loss" in key and not key.startswith("val") and not key.endswith("_avg")


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v) and v > 0


def _plot_recall_bars(rows: dict[str, dict[str, float]], png: Path) -> Path:
    import matplotlib.pyplot as plt

    keys = ["ir_r1", "ir_r5", "ir_r10", "tr_r1", "tr_r5", "tr_r10"]
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(rows)
    x = np.arange(len(keys))
    for i, (name, r) in enumerate(rows.items()):
        ax.bar(x + i * width, [r.get(k, 0.0) for k in keys], width, label=name)
    ax.set_xticks(x + 0.4 - width / 2)
    ax.set_xticklabels([k.upper().replace("_R", " R@") for k in keys])
    ax.set_ylabel("recall (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def _plot_examples(
    out: Path,
    corpus: Any,
    tuned: dict[str, Any],
    texts: list[str],
    image_ids: list[str],
    caption_image: np.ndarray,
    figs: Path,
    count: int,
) -> list[tuple[str, Path]]:
    import matplotlib.pyplot as plt
    from PIL import Image

    from imagebert.demo.baselines import caption_terms

    scores_path = tuned.get("_scores_path")
    if not scores_path or count <= 0:
        return []
    scores = np.load(scores_path, mmap_mode="r")
    boxes = json.loads(Path(corpus.boxes_json).read_text(encoding="utf-8"))
    cats = {c["id"]: c["name"] for c in boxes["categories"]}
    by_stem = {Path(im["file_name"]).stem: im for im in boxes["images"]}
    anns: dict[Any, list[dict]] = {}
    for a in boxes["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    rng = np.random.default_rng(0)
    picks = rng.choice(len(texts), size=min(count, len(texts)), replace=False)
    out_list = []
    for n, row in enumerate(picks):
        order = np.argsort(-np.asarray(scores[row]), kind="stable")[:5]
        words = caption_terms(texts[row])
        fig, axes = plt.subplots(1, 5, figsize=(15, 3.2))
        for ax, col in zip(axes, order):
            iid = image_ids[col]
            meta = by_stem[iid]
            ax.imshow(Image.open(Path(corpus.images_dir) / meta["file_name"]).convert("RGB"))
            for a in anns.get(meta["id"], []):
                if cats[a["category_id"]] in words:
                    x, y, w, h = a["bbox"]
                    ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, edgecolor="white", linewidth=2))
            hit = caption_image[row] == col
            for side in ax.spines.values():
                side.set_edgecolor("green" if hit else "gray")
                side.set_linewidth(5 if hit else 1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{float(scores[row, col]):.2f}", fontsize=9)
        fig.suptitle(texts[row], fontsize=10)
        fig.tight_layout()
        png = figs / f"example_{n}.png"
        fig.savefig(png, dpi=80)
        plt.close(fig)
        out_list.append((texts[row], png))
    return out_list
