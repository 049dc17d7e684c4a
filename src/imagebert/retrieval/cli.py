"""`imagebert finetune` and `imagebert evaluate` (both also run under torchrun)."""

from __future__ import annotations

import argparse
import json
import logging
import os

# Changing these between a checkpoint and its resumption changes the data order or the negatives.
FINETUNE_RESUME_REFUSED = (
    "training.batch_size", "training.seed", "training.grad_accum_steps", "model.max_regions",
    "model.max_text_tokens", "negatives.*", "loss.*", "dataset", "train_split", "init_checkpoint",
)  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune for image-text retrieval (BCE/CE/triplet, hard negatives, best checkpoint by validation)",
    )
    p.add_argument("config", help="fine-tuning YAML (see configs/finetune/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set training.epochs=2 (repeatable)")  # fmt: skip
    p.add_argument("--out", default=None, help="output folder (default: the config's out_dir)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", default=None, help="a checkpoint folder of this run to continue from")
    again.add_argument(
        "--overwrite", action="store_true", help="delete an existing run folder at --out first"
    )
    p.set_defaults(func=_finetune)

    e = subparsers.add_parser("evaluate", help="retrieval R@1/5/10 both ways (Flickr30k 1k, COCO 5k / 1k)")
    e.add_argument(
        "--checkpoint", required=True, help="pre-training (zero-shot) or fine-tuning checkpoint folder"
    )
    e.add_argument("--dataset", required=True, help="dataset YAML")
    e.add_argument("--split", default="test")
    e.add_argument("--protocol", default="all", choices=["flickr1k", "coco5k", "coco1k", "all"])
    e.add_argument("--mode", default="exhaustive", choices=["exhaustive", "fast", "both"],
                   help="fast: first-stage ranking, cross-encoder on the top k only; both: report them side by side")  # fmt: skip
    e.add_argument("--k", type=int, nargs="+", default=[128], help="fast mode re-ranking depth(s) per query")
    e.add_argument(
        "--out", default=None, help="folder for results.json, results.md and the resumable score cache"
    )
    again = e.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue an interrupted evaluation in --out")
    again.add_argument("--overwrite", action="store_true", help="delete an existing --out folder first")
    e.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    e.add_argument("--batch-size", type=int, default=128, help="pairs per cross-encoder forward")
    e.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if present, else cpu), cpu, cuda")
    e.add_argument("--fold-size", type=int, default=1000, help="images per COCO 1k fold (5 folds)")
    e.add_argument("--block", type=int, nargs=2, default=[1000, 100], metavar=("CAPTIONS", "IMAGES"),
                   help="score-matrix block shape: the unit of sharding and resumption")  # fmt: skip
    e.add_argument("--setting", default=None, choices=["zero-shot", "fine-tuned"],
                   help="which paper rows to compare with (default: from the checkpoint)")  # fmt: skip
    e.set_defaults(func=_evaluate)


def _finetune(args: argparse.Namespace) -> int:
    from imagebert.cli import CliError
    from imagebert.config_utils import ConfigError, to_dict
    from imagebert.errors import InputError
    from imagebert.tasks.retrieval import load_finetune_config, run_finetuning
    from imagebert.training import checkpoint as ckpt
    from imagebert.training.cli import check_trainer_settings, prepare_run

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    lock = None
    try:
        cfg = load_finetune_config(args.config, args.overrides)
        check_trainer_settings(cfg.training)
        if cfg.init_checkpoint:
            ckpt.verify_checkpoint(cfg.init_checkpoint, trainer_files=False)
        out = args.out or cfg.out_dir
        lock, found = prepare_run(out, resume=args.resume, overwrite=args.overwrite, config_dict=to_dict(cfg),
                                  refused=FINETUNE_RESUME_REFUSED)  # fmt: skip
        best = run_finetuning(cfg, out, resume=found)  # a run folder resolves to its newest checkpoint
    except (ConfigError, InputError, FileNotFoundError) as exc:
        raise CliError(str(exc)) from exc
    finally:
        if lock is not None:
            lock.release()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"best checkpoint: {best}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from imagebert.cli import CliError
    from imagebert.config_utils import ConfigError
    from imagebert.errors import InputError
    from imagebert.retrieval.evaluate import EvalOptions, evaluate_checkpoint, report_markdown

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from imagebert.rundir import open_run_dir
    from imagebert.runlock import is_main_process

    if any(k < 1 for k in args.k):
        raise CliError("--k values must be >= 1")
    for flag, value in (("--block CAPTIONS", args.block[0]), ("--block IMAGES", args.block[1]),
                        ("--batch-size", args.batch_size), ("--fold-size", args.fold_size)):  # fmt: skip
        if value < 1:
            raise CliError(f"{flag} must be >= 1, got {value}")
    opts = EvalOptions(
        mode=args.mode,
        ks_fast=list(args.k),
        fold_size=args.fold_size,
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
        block_captions=args.block[0],
        block_images=args.block[1],
    )
    if (args.resume or args.overwrite) and args.out is None:
        raise CliError("--resume and --overwrite need --out")
    lock = None
    try:
        if args.out is not None and is_main_process():
            lock = open_run_dir(
                args.out, resume=args.resume, overwrite=args.overwrite, what="evaluation folder"
            )
        report = evaluate_checkpoint(args.checkpoint, args.dataset, split=args.split, protocol=args.protocol,
                                     out_dir=args.out, options=opts, setting=args.setting)  # fmt: skip
    except (ConfigError, InputError, FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    finally:
        if lock is not None:
            lock.release()
    if report.get("rank", 0) == 0:
        print(report_markdown(report))
        if args.out is None:
            print(json.dumps(report["results"], indent=1))
    return 0
