"""`imagebert finetune` and `imagebert evaluate` (both also run under torchrun)."""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Literal

from imagebert.config_utils import (
    ConfigError,
    add_config_arguments,
    add_config_file_arguments,
    defer_config_arguments,
    meta,
)
from imagebert.runtime.allocator import cpu_allocator_field
from imagebert.runtime.threads import threads_field

# Changing these between a checkpoint and its resumption changes the data order or the negatives.
FINETUNE_RESUME_REFUSED = (
    "training.batch_size", "training.seed", "training.grad_accum_steps", "model.max_regions",
    "model.max_text_tokens", "negatives.*", "loss.*", "dataset", "train_split", "init_checkpoint",
)  # fmt: skip


FINETUNE_PATH_KEYS = ("dataset", "init_checkpoint", "init_from_bert")


@dataclass
class EvaluateSettings:
    """`imagebert evaluate`: what to score, how, and where the resumable results go."""

    checkpoint: str = field(
        metadata=meta("pre-training (zero-shot) or fine-tuning checkpoint folder", path=True)
    )
    dataset: str = field(metadata=meta("dataset YAML (a file or a shipped name)", config="datasets"))
    split: str = "test"
    protocol: Literal["flickr1k", "coco5k", "coco1k", "all"] = "all"
    mode: Literal["exhaustive", "fast", "both"] = field(default="exhaustive", metadata=meta(
        "fast: first-stage ranking, cross-encoder on the top k only; both: report them side by side"))  # fmt: skip
    k: list[int] = field(
        default_factory=lambda: [128], metadata=meta("fast mode re-ranking depth(s) per query")
    )
    out: str | None = field(default=None, metadata=meta(
        "folder for results.json, results.md and the resumable score cache"))  # fmt: skip
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    batch_size: int = field(default=128, metadata=meta("pairs per cross-encoder forward"))
    device: str = field(
        default="auto", metadata=meta("auto (cuda:LOCAL_RANK if present, else cpu), cpu, cuda")
    )
    fold_size: int = field(default=1000, metadata=meta("images per COCO 1k fold (5 folds)"))
    block: list[int] = field(default_factory=lambda: [250, 50], metadata=meta(
        "score-matrix block shape CAPTIONS IMAGES: the unit of sharding and resumption (12,500 pairs: a resumed "
        "run redoes little)"))  # fmt: skip
    setting: Literal["zero-shot", "fine-tuned"] | None = field(default=None, metadata=meta(
        "which paper rows to compare with (default: from the checkpoint)"))  # fmt: skip
    weights: Literal["fp32", "bf16", "int8", "int8-static"] = field(default="fp32", metadata=meta(
        "bf16: keep the encoder's weights in bf16 when --precision bf16 (no per-matmul casts; the score head "
        "stays fp32); int8: the encoder layers run int8 matmuls on a CPU in fp32 precision (the lever for CPUs "
        "without bf16 kernels; embeddings and score head stay fp32): faster scoring, see BENCHMARKS.md; "
        "int8-static: int8 with activation scales calibrated on a seeded sample of the gallery and the layer "
        "stack compiled (CPU, needs imagebert[int8]): faster again once the minutes of compiling pay back, "
        "for long evaluations"))  # fmt: skip
    int8_shapes: Literal["dynamic", "static"] = field(default="dynamic", metadata=meta(
        "with --weights int8-static: dynamic compiles one graph for every sequence length, static one per "
        "length (sequences padded to multiples of 4); benchmarks/results/int8.md measures both"))  # fmt: skip
    compile: Literal["off", "on", "auto"] = field(default="off", metadata=meta(
        "torch.compile the cross-encoder (auto: on for long CUDA runs; on a CPU the compile time rarely pays "
        "back)"))  # fmt: skip
    attention: Literal["auto", "sdpa", "eager"] = field(default="sdpa", metadata=meta(
        "the encoder's attention kernel (auto: eager on a CPU in bf16, where it was measured faster; sdpa "
        "elsewhere), see imagebert.runtime.attention"))  # fmt: skip
    cpu_allocator: Literal["tuned", "system"] = cpu_allocator_field()
    threads: str = threads_field()

    def validate(self) -> None:
        from imagebert.runtime.threads import parse_threads

        if any(k < 1 for k in self.k):
            raise ConfigError("--k values must be >= 1")
        if len(self.block) != 2:
            raise ConfigError(f"--block takes two numbers (CAPTIONS IMAGES), got {self.block}")
        for flag, value in (("--block CAPTIONS", self.block[0]), ("--block IMAGES", self.block[1]),
                            ("--batch-size", self.batch_size), ("--fold-size", self.fold_size)):  # fmt: skip
            if value < 1:
                raise ConfigError(f"{flag} must be >= 1, got {value}")
        from imagebert.retrieval.scorers import INT8_WEIGHTS

        if self.weights in INT8_WEIGHTS:
            from imagebert.runtime.quantize import int8_setting_conflict

            conflict = int8_setting_conflict(
                device=self.device, precision=self.precision, compile=self.compile, weights=self.weights
            )
            if conflict:
                raise ConfigError(conflict)
        if self.int8_shapes != "dynamic" and self.weights != "int8-static":
            raise ConfigError(f"--int8-shapes {self.int8_shapes} applies to --weights int8-static only")
        if self.weights == "int8-static":
            from imagebert.runtime.int8_static import require_static_int8_runtime

            try:
                require_static_int8_runtime("cpu")  # torchao importable, before any model loads
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
        parse_threads(self.threads)


def _finetune_config() -> type:
    from imagebert.tasks.retrieval import FinetuneConfig

    return FinetuneConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune for image-text retrieval (BCE/CE/triplet, hard negatives, best checkpoint by validation)",
        description="Fine-tune from a YAML config (a file, or a shipped name such as finetune/demo_cpu); every "
        "setting has a flag, `--set` reaches the rest.",
    )
    add_config_file_arguments(p, "finetune", positional=True)
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", default=None, help="a checkpoint folder of this run to continue from")
    again.add_argument(
        "--overwrite", action="store_true", help="delete an existing run folder at --out first"
    )
    defer_config_arguments(
        p, _finetune_config, aliases={"out_dir": ["--out"], "training.num_threads": ["--threads"]}
    )
    p.set_defaults(func=_finetune)

    e = subparsers.add_parser("evaluate", help="retrieval R@1/5/10 both ways (Flickr30k 1k, COCO 5k / 1k)")
    add_config_file_arguments(e)
    again = e.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue an interrupted evaluation in --out")
    again.add_argument("--overwrite", action="store_true", help="delete an existing --out folder first")
    add_config_arguments(e, EvaluateSettings)
    e.set_defaults(func=_evaluate)


def _finetune(args: argparse.Namespace) -> int:
    from imagebert.config_utils import config_argument, resolve_config_path, to_dict
    from imagebert.runtime.threads import apply_threads
    from imagebert.tasks.retrieval import FinetuneConfig, load_finetune_config, run_finetuning
    from imagebert.training import checkpoint as ckpt
    from imagebert.training.cli import check_trainer_settings, command_overrides, prepare_run

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    lock = None
    try:
        path = config_argument(args)
        path = resolve_config_path(path, "finetune") if path else None
        cfg = load_finetune_config(path, command_overrides(args, FinetuneConfig, FINETUNE_PATH_KEYS))
        check_trainer_settings(cfg.training)
        apply_threads(cfg.training.num_threads)  # before any data is read (the trainer keeps it)
        if cfg.init_checkpoint:
            ckpt.verify_checkpoint(cfg.init_checkpoint, trainer_files=False)
        out = cfg.out_dir
        lock, found = prepare_run(out, resume=args.resume, overwrite=args.overwrite, config_dict=to_dict(cfg),
                                  refused=FINETUNE_RESUME_REFUSED)  # fmt: skip
        best = run_finetuning(cfg, out, resume=found)  # a run folder resolves to its newest checkpoint
    finally:  # a missing file (FileNotFoundError) is reported by imagebert.cli.main
        if lock is not None:
            lock.release()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"best checkpoint: {best}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from imagebert.cli import CliError
    from imagebert.config_utils import load_command_config
    from imagebert.retrieval.evaluate import EvalOptions, evaluate_checkpoint, report_markdown
    from imagebert.rundir import open_run_dir
    from imagebert.runlock import is_main_process
    from imagebert.runtime.threads import apply_threads

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    s = load_command_config(EvaluateSettings, args)
    from imagebert.runtime.allocator import tune_cpu_allocator

    # before the model exists; it tunes host memory only, so CUDA runs lose nothing
    tune_cpu_allocator(s.cpu_allocator)
    if (args.resume or args.overwrite) and s.out is None:
        raise CliError("--resume and --overwrite need --out")
    dataset = s.dataset  # a shipped name is already its file (config_utils: `config="datasets"` fields)
    from imagebert.retrieval.scorers import INT8_WEIGHTS

    device = (
        "cpu" if s.weights in INT8_WEIGHTS and s.device == "auto" else s.device
    )  # int8 kernels are CPU kernels
    opts = EvalOptions(mode=s.mode, ks_fast=list(s.k), fold_size=s.fold_size, device=device, precision=s.precision,
                       batch_size=s.batch_size, block_captions=s.block[0], block_images=s.block[1],
                       weights=s.weights, int8_shapes=s.int8_shapes, compile=s.compile,
                       attention=s.attention)  # fmt: skip
    apply_threads(s.threads)
    lock = None
    try:
        if s.out is not None and is_main_process():
            lock = open_run_dir(s.out, resume=args.resume, overwrite=args.overwrite, what="evaluation folder")
        report = evaluate_checkpoint(s.checkpoint, dataset, split=s.split, protocol=s.protocol,
                                     out_dir=s.out, options=opts, setting=s.setting)  # fmt: skip
    finally:
        if lock is not None:
            lock.release()
    if report.get("rank", 0) == 0:
        print(report_markdown(report))
        if s.out is None:
            print(json.dumps(report["results"], indent=1))
    return 0
