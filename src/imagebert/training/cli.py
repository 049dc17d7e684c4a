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


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="multi-stage ImageBERT pre-training (MLM, MOC, MRFR, ITM); single process or under torchrun",
        description="Pre-train ImageBERT from a YAML config (see configs/pretrain/). Run the same command under "
        "`torchrun --nproc_per_node N -m imagebert pretrain ...` for DDP (gloo on CPU, NCCL on GPU).",
    )
    p.add_argument("config", help="pretrain YAML (configs/pretrain/*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set training.precision=bf16 --set stages.0.steps=100")  # fmt: skip
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", metavar="DIR", help="continue from a checkpoint folder, or the newest one in a run folder"
    )
    again.add_argument(
        "--overwrite", action="store_true", help="delete an existing run folder at --out first"
    )
    p.add_argument("--out", metavar="DIR", help="output folder (default: the config's out_dir)")
    p.set_defaults(func=_run)


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
    from imagebert.config_utils import ConfigError, to_dict
    from imagebert.errors import InputError
    from imagebert.tasks.pretraining import load_pretrain_config, run_pretraining
    from imagebert.training.trainer import NonFiniteLossError

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    lock = None
    try:
        config = load_pretrain_config(args.config, args.overrides)
        check_trainer_settings(config.training)
        out = args.out or config.out_dir
        lock, _found = prepare_run(out, resume=args.resume, overwrite=args.overwrite, config_dict=to_dict(config),
                           refused=PRETRAIN_RESUME_REFUSED)  # fmt: skip
        final = run_pretraining(config, out_dir=out, resume=args.resume)
    except (ConfigError, InputError, FileNotFoundError) as exc:
        raise CliError(str(exc)) from exc
    except NonFiniteLossError as exc:
        raise CliError(str(exc)) from exc
    finally:
        if lock is not None:
            lock.release()

    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final checkpoint: {final}")
    return 0
