"""`imagebert pretrain CONFIG [--set key=value ...] [--resume DIR | --overwrite] [--out DIR]` (also under torchrun).

Before any work (rank 0): an existing non-empty run folder needs --resume or --overwrite, the folder's writer lock
is taken for the whole run, checkpoint temporaries left by a killed run are deleted, and a --resume checkpoint is
checked (files intact; batch size, seed and region/text sizes unchanged; other changes are logged and recorded in
`resume_changes.jsonl`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Changing these between a checkpoint and its resumption silently changes the data order or the model inputs.
PRETRAIN_RESUME_REFUSED = (
    "training.batch_size", "training.seed", "training.grad_accum_steps", "model.max_regions",
    "model.max_text_tokens", "model.visual_feature_dim", "stages.*.batch_size", "stages.*.name",
    "stages.*.datasets", "masking.*", "itm.*",
)  # fmt: skip
RESUME_IGNORED = ("out_dir", "training.device", "training.progress_bar", "training.num_workers",
                  "training.tensorboard", "training.log_every")  # fmt: skip


# Path settings given on the command line resolve against the working directory (docs/configuration.md).
PRETRAIN_PATH_KEYS = ("init_from_bert", "init_from_checkpoint", "stages.*.datasets")


def register(subparsers: argparse._SubParsersAction) -> None:
    from imagebert.config_utils import add_config_file_arguments, defer_config_arguments

    p = subparsers.add_parser(
        "pretrain",
        help="multi-stage ImageBERT pre-training (MLM, MOC, MRFR, ITM); single process or under torchrun",
        description="Pre-train ImageBERT from a YAML config (a file, or a shipped name such as pretrain/demo_cpu). "
        "Run the same command under `torchrun --nproc_per_node N -m imagebert pretrain ...` for DDP (gloo on "
        "CPU, NCCL on GPU). Every setting has a flag; `--set` reaches the rest (stages.0.steps=100, model.*).",
    )
    add_config_file_arguments(p, "pretrain", positional=True)
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", metavar="DIR", help="continue from a checkpoint folder, or the newest one in a run folder"
    )
    again.add_argument(
        "--overwrite", action="store_true", help="delete an existing run folder at --out first"
    )
    defer_config_arguments(
        p, _pretrain_config, aliases={"out_dir": ["--out"], "training.num_threads": ["--threads"]}
    )
    p.set_defaults(func=_run)


def _pretrain_config() -> type:
    from imagebert.tasks.pretraining import PretrainConfig

    return PretrainConfig


def command_overrides(args: argparse.Namespace, cls: type, path_keys: tuple[str, ...]) -> list[str]:
    """Generated flags + `--set` of a training command, command-line paths made absolute against the cwd."""
    from imagebert.config_utils import absolutize_overrides, cli_overrides

    return absolutize_overrides(cli_overrides(args, cls), path_keys)


def check_trainer_settings(training: Any, prefix: str = "training") -> None:
    """Values TrainerConfig.validate does not reject yet but which make no sense (ConfigError naming the key)."""
    from imagebert.config_utils import ConfigError

    for key in ("checkpoint_every", "keep_checkpoints", "num_workers", "warmup_steps"):
        value = getattr(training, key, None)
        if value is not None and value < 0:
            raise ConfigError(f"{prefix}.{key} must be >= 0, got {value}")
    if getattr(training, "max_grad_norm", 0) < 0:
        raise ConfigError(
            f"{prefix}.max_grad_norm must be >= 0 (0 = no clipping), got {training.max_grad_norm}"
        )


def prepare_run(
    out: str | os.PathLike,
    *,
    resume: str | os.PathLike | None,
    overwrite: bool,
    config_dict: dict[str, Any],
    refused: tuple[str, ...],
) -> Any:
    """The shared start of `pretrain` and `finetune` (rank 0): folder refusal + lock, leftovers, resume checks.

    Returns (the held run-folder lock or None on other ranks, the resolved --resume checkpoint or None).
    Raises InputError/ConfigError with one line."""
    from imagebert.config_utils import ConfigError
    from imagebert.rundir import open_run_dir
    from imagebert.runlock import is_main_process
    from imagebert.training import checkpoint as ckpt

    found = None
    if resume is not None:
        found = ckpt.find_latest_checkpoint(Path(resume))
        if found is None:
            raise ConfigError(f"--resume: no checkpoint found in {resume}")
        ckpt.verify_checkpoint(found)
        refusals, changes = ckpt.resume_config_changes(found, config_dict, refused, RESUME_IGNORED)
        if refusals:
            more = f" (and {len(refusals) - 1} more)" if len(refusals) > 1 else ""
            raise ConfigError(
                f"--resume: {refusals[0]}{more}; resuming with a different value would not continue that run "
                "(start a new run with --out, or resume with the checkpoint's value)"
            )
    else:
        changes = {}
    if not is_main_process():
        return None, found
    lock = open_run_dir(out, resume=resume is not None, overwrite=overwrite, what="run folder")
    for leftover in ckpt.remove_stale_temporaries(out):
        log.info("removed %s (a checkpoint being written when an earlier run was killed)", leftover)
    if changes:
        for key, (old, new) in changes.items():
            log.warning("--resume: %s changed from %r to %r", key, old, new)
        with open(Path(out) / "resume_changes.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                 "checkpoint": str(found), "changes": changes}, default=str) + "\n")  # fmt: skip
    return lock, found


def _run(args: argparse.Namespace) -> int:
    from imagebert.cli import CliError
    from imagebert.config_utils import config_argument, resolve_config_path, to_dict
    from imagebert.runtime.threads import apply_threads
    from imagebert.tasks.pretraining import PretrainConfig, load_pretrain_config, run_pretraining
    from imagebert.training.trainer import NonFiniteLossError

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    lock = None
    try:
        path = config_argument(args)
        path = resolve_config_path(path, "pretrain") if path else None
        config = load_pretrain_config(path, command_overrides(args, PretrainConfig, PRETRAIN_PATH_KEYS))
        check_trainer_settings(config.training)
        apply_threads(config.training.num_threads)  # before any data is read (the trainer keeps it)
        out = config.out_dir
        lock, _found = prepare_run(out, resume=args.resume, overwrite=args.overwrite, config_dict=to_dict(config),
                           refused=PRETRAIN_RESUME_REFUSED)  # fmt: skip
        final = run_pretraining(config, out_dir=out, resume=args.resume)
    except NonFiniteLossError as exc:  # a missing file (FileNotFoundError) is reported by imagebert.cli.main
        raise CliError(str(exc)) from exc
    finally:
        if lock is not None:
            lock.release()

    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final checkpoint: {final}")
    return 0
