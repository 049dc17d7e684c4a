"""`imagebert pretrain CONFIG [--set key=value ...] [--resume DIR] [--out DIR]` (also under torchrun)."""

from __future__ import annotations

import argparse
import logging
import sys


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
    p.add_argument(
        "--resume", metavar="DIR", help="continue from a checkpoint folder, or the newest one in a run folder"
    )
    p.add_argument("--out", metavar="DIR", help="output folder (default: the config's out_dir)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from imagebert.cli import CliError
    from imagebert.config_utils import ConfigError
    from imagebert.errors import InputError
    from imagebert.training.pretraining import load_pretrain_config, run_pretraining
    from imagebert.training.trainer import NonFiniteLossError

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        config = load_pretrain_config(args.config, args.overrides)
        final = run_pretraining(config, out_dir=args.out, resume=args.resume)
    except (ConfigError, InputError, FileNotFoundError) as exc:
        raise CliError(str(exc)) from exc
    except NonFiniteLossError as exc:
        raise CliError(str(exc)) from exc
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final checkpoint: {final}")
    return 0
