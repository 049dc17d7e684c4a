"""`imagebert demo`: the end-to-end demo on the built-in corpus (what `make demo` runs)."""

from __future__ import annotations

import argparse
import dataclasses


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="build the demo corpus, pre-train, evaluate zero-shot, fine-tune, evaluate, write report.md",
        description=__doc__,
    )
    p.add_argument("--out", default="demo_out", help="output folder (re-running resumes from finished steps)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a demo setting, e.g. --set pretrain_steps=300 (see imagebert.demo.pipeline.DemoSettings)",
    )
    p.add_argument("--bert", default=None, help="BERT folder for the text side (default: the shipped MiniLM)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from imagebert.cli import CliError
    from imagebert.config_utils import ConfigError, apply_overrides, from_dict
    from imagebert.demo.pipeline import DemoSettings, run_demo

    try:
        settings = from_dict(
            DemoSettings, apply_overrides(dataclasses.asdict(DemoSettings()), args.overrides)
        )
    except ConfigError as exc:
        raise CliError(str(exc)) from exc
    run_demo(args.out, settings, bert_path=args.bert)
    return 0
