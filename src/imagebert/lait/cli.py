"""`imagebert lait run|train-scorer|show-config`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("lait", help="build image-text pairs from web crawls (LAIT pipeline)")
    sub = p.add_subparsers(dest="lait_command", metavar="STEP")

    run = sub.add_parser("run", help="WARC files / HTML folders -> captions.jsonl + images/ + funnel report")
    run.add_argument("inputs", nargs="+", help="WARC files, HTML files, or folders holding them")
    run.add_argument("--out", required=True, help="output folder (also holds work/ for resumable shards)")
    run.add_argument("--config", default=None, help="YAML config (see configs/lait/default.yaml)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    run.add_argument("--workers", type=int, default=None, help="local worker processes (1 = in-process)")
    run.add_argument(
        "--scheduler", default=None, help="address of a running Dask scheduler (tcp://host:8786)"
    )
    run.set_defaults(func=_run)

    tr = sub.add_parser(
        "train-scorer", help="fit the relevance model on labelled (image, text, related) rows"
    )
    tr.add_argument("labels", help='JSONL rows: {"image": path, "text": str, "related": 0|1, "source"?}')
    tr.add_argument("--out", required=True, help="where to write the scorer (.safetensors)")
    tr.add_argument("--config", default=None)
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    tr.set_defaults(func=_train)

    ms = sub.add_parser("make-sample", help="write a small synthetic WARC crawl to try the pipeline on")
    ms.add_argument("folder")
    ms.add_argument("--pages", type=int, default=12)
    ms.set_defaults(func=_make_sample)

    sc = sub.add_parser("show-config", help="print the effective config as YAML")
    sc.add_argument("--config", default=None)
    sc.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    sc.set_defaults(func=_show)
    p.set_defaults(func=lambda a: (p.print_help(), 1)[1])


def _config(args):
    from imagebert.cli import CliError
    from imagebert.config_utils import ConfigError
    from imagebert.lait.config import load_lait_config

    try:
        return load_lait_config(args.config, args.set)
    except ConfigError as exc:
        raise CliError(str(exc)) from exc


def _run(args: argparse.Namespace) -> int:
    from imagebert.cli import CliError
    from imagebert.lait.pipeline import LaitRunError, run_lait

    cfg = _config(args)
    try:
        summary = run_lait(args.inputs, args.out, cfg, scheduler=args.scheduler, workers=args.workers)
    except (FileNotFoundError, ValueError, LaitRunError) as exc:
        raise CliError(str(exc)) from exc
    print(
        f"lait: {summary['pairs']} pairs from {summary['shards']} shards "
        f"({summary['processed']} processed, {summary['skipped']} already done); "
        f"report: {Path(args.out) / 'funnel.md'}"
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    from imagebert.cli import CliError
    from imagebert.errors import InputError
    from imagebert.lait.train import train_from_jsonl

    cfg = _config(args)
    try:
        metrics = train_from_jsonl(args.labels, args.out, cfg)
    except InputError as exc:
        raise CliError(str(exc)) from exc
    print(json.dumps(metrics))
    return 0


def _show(args: argparse.Namespace) -> int:
    import yaml

    cfg = _config(args)
    yaml.safe_dump(cfg.to_dict(), sys.stdout, sort_keys=False)
    return 0


def _make_sample(args: argparse.Namespace) -> int:
    from imagebert.lait.synthetic import write_sample_crawl

    print(write_sample_crawl(args.folder, args.pages))
    return 0
