"""`imagebert finetune` and `imagebert evaluate` (both also run under torchrun)."""

from __future__ import annotations

import argparse
import json
import logging
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune for image-text retrieval (BCE/CE/triplet, hard negatives, best checkpoint by validation)",
    )
    p.add_argument("config", help="fine-tuning YAML (see configs/finetune/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set training.epochs=2 (repeatable)")  # fmt: skip
    p.add_argument("--out", default=None, help="output folder (default: the config's out_dir)")
    p.add_argument("--resume", default=None, help="a checkpoint folder of this run to continue from")
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
    from imagebert.config_utils import ConfigError
    from imagebert.errors import InputError
    from imagebert.retrieval.finetune import load_finetune_config, run_finetuning

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = load_finetune_config(args.config, args.overrides)
        best = run_finetuning(cfg, args.out, resume=args.resume)
    except (ConfigError, InputError, FileNotFoundError) as exc:
        raise CliError(str(exc)) from exc
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"best checkpoint: {best}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from imagebert.cli import CliError
    from imagebert.config_utils import ConfigError
    from imagebert.errors import InputError
    from imagebert.retrieval.evaluate import EvalOptions, evaluate_checkpoint, report_markdown

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if any(k < 1 for k in args.k):
        raise CliError("--k values must be >= 1")
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
    try:
        report = evaluate_checkpoint(args.checkpoint, args.dataset, split=args.split, protocol=args.protocol,
                                     out_dir=args.out, options=opts, setting=args.setting)  # fmt: skip
    except (ConfigError, InputError, FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    if report.get("rank", 0) == 0:
        print(report_markdown(report))
        if args.out is None:
            print(json.dumps(report["results"], indent=1))
    return 0
