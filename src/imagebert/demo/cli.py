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
    settings = load_config(DemoSettings, resolve_config_path(config) if config else None,
                           cli_overrides(args, DemoSettings))  # fmt: skip
    check_demo_settings(settings)
    run_demo(args.out, settings, bert_path=args.bert)
    return 0


def check_demo_settings(s: object) -> None:
    """Reject nonsense sizes before the corpus is built (minutes of work), naming the key."""
    from imagebert.config_utils import ConfigError

    minimum = {"num_train": 2, "num_val": 1, "num_test": 2, "image_size": 32, "extract_size": 32,
               "pretrain_steps": 1, "pretrain_batch": 1, "finetune_steps": 1, "finetune_batch": 1,
               "examples": 0, "seed": 0}  # fmt: skip
    for key, low in minimum.items():
        value = getattr(s, key, None)
        if value is not None and value < low:
            raise ConfigError(f"{key} must be >= {low}, got {value}")
    if getattr(s, "extract_size", 32) % 32:
        raise ConfigError(f"extract_size must be a multiple of 32, got {s.extract_size}")  # type: ignore[attr-defined]
    for key, allowed in (("eval_precision", ("auto", "fp32", "bf16", "fp16")),
                         ("train_precision", ("fp32", "bf16", "fp16"))):  # fmt: skip
        value = getattr(s, key, None)
        if value is not None and value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
