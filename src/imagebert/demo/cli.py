"""`imagebert demo`: the end-to-end demo on the built-in corpus (what `make demo` runs)."""

from __future__ import annotations

import argparse

from imagebert.config_utils import add_config_file_arguments, defer_config_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="build the demo corpus, pre-train, evaluate zero-shot, fine-tune, evaluate, write report.md",
        description=__doc__,
    )
    p.add_argument("--out", default="demo_out", help="output folder (re-running resumes from finished steps)")
    p.add_argument("--bert", default=None, help="BERT folder for the text side (default: the shipped MiniLM)")
    add_config_file_arguments(p)
    defer_config_arguments(p, _settings_class)
    p.set_defaults(func=_run)


def _settings_class() -> type:
    from imagebert.demo.pipeline import DemoSettings

    return DemoSettings


def _run(args: argparse.Namespace) -> int:
    from imagebert.config_utils import cli_overrides, config_argument, load_config, resolve_config_path
    from imagebert.demo.pipeline import DemoSettings, run_demo

    config = config_argument(args)
    # load_config runs DemoSettings.validate before any work
    settings = load_config(DemoSettings, resolve_config_path(config) if config else None,
                           cli_overrides(args, DemoSettings))  # fmt: skip
    run_demo(args.out, settings, bert_path=args.bert)
    return 0


def check_demo_settings(s: object) -> None:
    """Deprecated alias of DemoSettings.validate."""
    from imagebert.demo.pipeline import DemoSettings

    DemoSettings.validate(s)  # type: ignore[arg-type]  # also takes a settings-like object
