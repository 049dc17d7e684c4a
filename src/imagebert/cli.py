"""The single `imagebert` command. Each capability registers its own subcommands from `<area>/cli.py`.

An area module exposes `register(subparsers)`; it adds its parsers and sets `func` on each to a callable
taking the parsed `argparse.Namespace` and returning an exit code. Areas are imported lazily so that a broken
optional dependency in one area does not take the whole CLI down.
"""

from __future__ import annotations

import argparse
import importlib
import sys

AREAS = (
    "imagebert.data.cli",
    "imagebert.extraction.cli",
    "imagebert.training.cli",
    "imagebert.retrieval.cli",
    "imagebert.lait.cli",
    "imagebert.demo.cli",
    "imagebert.serve.cli",
)


class CliError(Exception):
    """An error meant for the user: printed without a traceback, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagebert", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in AREAS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # area not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    from imagebert.config_utils import ConfigError
    from imagebert.errors import InputError

    try:
        return int(args.func(args) or 0)
    except (
        CliError,
        InputError,
        ConfigError,
    ) as exc:  # user errors: one line, exit 2 (a traceback is for bugs)
        print(f"imagebert {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
