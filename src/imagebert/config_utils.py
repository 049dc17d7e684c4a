"""YAML configs as dataclasses: unknown keys are rejected by name, and `--set a.b=value` overrides any field.

Every command goes through this module, so the same rules hold everywhere (docs/configuration.md):
  * a command's settings are one dataclass; its flags are generated from that dataclass (`add_config_arguments`),
    so a default is written once, in the dataclass;
  * precedence: dataclass default < `--config FILE` (a path or a shipped name such as `pretrain/demo_cpu`) <
    generated flags < `--set a.b=value`;
  * paths written in a YAML file resolve against that file's folder, paths given on the command line against the
    working directory (output folders such as `out_dir` are always relative to the working directory);
  * validation is one `validate()` method on each config dataclass (the top level and any nested section), called
    by the loader (`validate_sections`); a dataclass users build directly also calls it from `__post_init__`. A typo
    in a key or a bad value is an error (ConfigError naming the file and the key) before any work starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import inspect
import json
import os
import re
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that cannot be used: names the file (when known) and the dotted key."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the annotated field type, recursing into nested dataclasses and containers."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        last_error: Exception | None = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except (ConfigError, TypeError, ValueError) as exc:
                last_error = exc
        raise ConfigError(f"{key}: {value!r} does not fit {tp}") from last_error
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {_type_name(tp)}, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(float(value)) if value.replace(".", "", 1).lstrip("-").isdigit() else int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping; unknown keys raise ConfigError naming the dotted key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + f"; valid keys here: {', '.join(sorted(fields))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    missing = [f.name for f in fields.values() if f.init and f.name not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]  # fmt: skip
    if missing:
        raise ConfigError(f"missing required setting '{prefix}{missing[0]}'")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {exc}") from exc


def to_dict(obj: Any) -> Any:
    """A dataclass as plain YAML-able data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value parsed as YAML, so numbers, booleans and lists work)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _index(node: list, part: str, item: str, where: str) -> int:
    if not part.isdigit():
        raise ConfigError(
            f"override '{item}': '{where}' is a list; use a number to pick an entry, not '{part}'"
        )
    i = int(part)
    if i >= len(node):
        valid = f"indices 0..{len(node) - 1}" if node else "it is empty"
        raise ConfigError(f"override '{item}': '{where}' has {len(node)} entries ({valid}), no index {part}")
    return i


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply `key.path=value` overrides to a raw mapping (validation happens when the dataclass is built).

    Lists are indexed by number (`stages.0.steps=3`); a bad index or a name used on a list is a ConfigError."""
    for item in overrides or []:
        path, value = parse_override(item)
        if any(not p for p in path):
            raise ConfigError(f"override '{item}': empty key part")
        node: Any = data
        for depth, part in enumerate(path[:-1]):
            where = ".".join(path[:depth]) or "config"
            if isinstance(node, list):
                node = node[_index(node, part, item, where)]
            else:
                nxt = node.get(part)
                if nxt is None:
                    nxt = node[part] = {}
                node = nxt
            if not isinstance(node, dict | list):
                raise ConfigError(f"override '{item}': '{'.'.join(path[: depth + 1])}' is not a section")
        last = path[-1]
        if isinstance(node, list):
            node[_index(node, last, item, ".".join(path[:-1]))] = value
        else:
            node[last] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Read YAML `path` (or start empty), resolve its path fields against its folder, apply overrides, build `cls`
    and call the `validate()` of each nested section and of `cls` (`validate_sections`). Errors name the file and
    the key."""
    if path is not None:
        path = resolve_config_path(path)
    data = read_yaml(path) if path is not None else {}
    if path is not None:
        resolve_yaml_paths(cls, data, Path(path).resolve().parent)
    data = apply_overrides(data, overrides)
    try:
        obj = from_dict(cls, data)
        validate_sections(obj)
        return obj
    except ConfigError as exc:
        if path is not None and not str(exc).startswith(f"{path}:"):
            raise ConfigError(f"{path}: {exc}") from exc
        raise


def _sections(obj: Any) -> Iterable[Any]:
    """The dataclass instances inside `obj` (fields, list items, mapping values), deepest first."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, dict):
            value = list(value.values())
        items = value if isinstance(value, list | tuple) else [value]
        for item in items:
            if dataclasses.is_dataclass(item) and not isinstance(item, type):
                yield from _sections(item)
                yield item


def validate_sections(obj: Any) -> None:
    """Call the zero-argument `validate()` of every nested section (deepest first), then of `obj` itself.

    A `validate` with parameters (e.g. `PretrainConfig.validate(check_paths=...)`, `TrainerConfig.validate(
    prefix)`) is left to the config's own loader or parent, which knows the arguments."""
    for item in [*_sections(obj), obj]:
        validate = getattr(item, "validate", None)
        if callable(validate) and not inspect.signature(validate).parameters:
            validate()


# Backwards-friendly aliases used in the conventions doc.
load_yaml_dataclass = load_config


# ----------------------------------------------------------------------------------- shipped configs and paths

CONFIG_KINDS = ("pretrain", "finetune", "datasets", "lait")


def configs_root() -> Path:
    """The folder of the configs shipped inside the package (works for editable and wheel installs)."""
    return Path(__file__).resolve().parent / "configs"


def shipped_configs() -> list[str]:
    """Names (`kind/name`) of the shipped configs, e.g. `pretrain/demo_cpu`."""
    root = configs_root()
    return sorted(f"{p.parent.name}/{p.stem}" for p in root.glob("*/*.yaml"))


def resolve_config_path(value: str | os.PathLike, kind: str | None = None) -> Path:
    """A config argument: an existing file, else a shipped name (`pretrain/demo_cpu`, or `demo_cpu` when the
    command knows its `kind`). A missing file that is not a shipped name is a ConfigError listing the names."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    name = str(value).removesuffix(".yaml").removesuffix(".yml")
    root = configs_root()
    for candidate in (root / f"{name}.yaml", root / str(kind or "") / f"{name}.yaml"):
        if name and candidate.is_file() and ".." not in Path(name).parts:
            return candidate
    names = [n for n in shipped_configs() if kind is None or n.startswith(f"{kind}/")]
    raise ConfigError(
        f"config file not found: {value} (not a file, nor a shipped config: {', '.join(names) or 'none'})"
    )


def _absolute(value: Any, base: Path, kind: str | None = None) -> Any:
    """`value` joined to `base` when relative; with a config `kind`, a shipped config name (that is not a file
    under `base`) becomes the shipped file's path."""
    if isinstance(value, list):
        return [_absolute(v, base, kind) for v in value]
    if not isinstance(value, str) or not value or "://" in value or value.startswith("@"):
        return value
    p = Path(value).expanduser()
    if p.is_absolute():
        return value
    if kind is not None and not (base / p).exists():
        try:
            return str(resolve_config_path(value, kind))
        except ConfigError:
            pass
    return os.path.normpath(base / p)


def _is_path_field(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("path"))


def resolve_yaml_paths(cls: Any, data: dict[str, Any], base: Path) -> dict[str, Any]:
    """In place: relative values of fields marked `path=True` (and nested dataclasses) join `base`."""
    if not (dataclasses.is_dataclass(cls) and isinstance(data, dict)):
        return data
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        if _is_path_field(f):
            data[f.name] = _absolute(data[f.name], base, f.metadata.get("config"))
            continue
        tp = _strip_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            resolve_yaml_paths(tp, data[f.name], base)
        elif (
            typing.get_origin(tp) is list
            and typing.get_args(tp)
            and dataclasses.is_dataclass(typing.get_args(tp)[0])
        ):
            for item in data[f.name] or []:
                resolve_yaml_paths(typing.get_args(tp)[0], item, base)
    return data


def absolutize_overrides(
    overrides: Iterable[str], patterns: Iterable[str], base: Path | None = None, kind: str | None = None
) -> list[str]:
    """Command-line `key=value` overrides whose key matches `patterns` (fnmatch, e.g. `stages.*.datasets`) get
    relative paths made absolute against the working directory, so a loader that resolves against the YAML
    folder leaves them alone."""
    base = base or Path.cwd()
    pats = list(patterns)
    out = []
    for item in overrides:
        parts, value = parse_override(item)
        key = ".".join(parts)
        if any(fnmatch.fnmatchcase(key, p) for p in pats):
            value = _absolute(value, base, kind)
            item = f"{key}={json.dumps(value)}"
        out.append(item)
    return out


# ------------------------------------------------------------------------------ dataclass -> argparse flags

_DEST = "_cfg:"


def meta(
    help: str = "",
    *,
    flags: Sequence[str] = (),
    positional: bool = False,
    metavar: str | None = None,
    path: bool = False,
    config: str | None = None,
    choices: Sequence[Any] | None = None,
    cli: bool = True,
    flat: bool = False,
) -> dict[str, Any]:
    """Field metadata for the flag generator: `flags` are extra spellings (kept for old command lines), `path`
    marks a path (resolution rule), `config="datasets"` a path that may also be a shipped config name, `cli=False` leaves a field to YAML/--set only, `flat` gives a nested section's
    fields flags without the section prefix."""
    return {"help": help, "flags": tuple(flags), "positional": positional, "metavar": metavar, "path": path or config is not None, "config": config,
            "choices": None if choices is None else tuple(choices), "cli": cli, "flat": flat}  # fmt: skip


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


_COMMENT = re.compile(r"^\s+(\w+)\s*:[^#]*#\s*(.+)$")


def _field_comments(cls: type) -> dict[str, str]:
    """Trailing `# comment` of each field in the class source: the help text when metadata gives none."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out = {}
    for line in lines:
        m = _COMMENT.match(line)
        if m and m.group(1) not in out:
            out[m.group(1)] = m.group(2).strip()
    return out


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def add_config_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    aliases: dict[str, Sequence[str]] | None = None,
    skip: Iterable[str] = (),
    prefix: str = "",
    flag_prefix: str = "",
) -> None:
    """Add one flag per scalar/list field of dataclass `cls` (nested sections as `--section.field`).

    Values are kept as typed by the user (bools as bools) under private dests; `cli_overrides(args)` turns them into
    overrides, so a flag and `--set` go through the same coercion and validation. Fields of mapping or
    dataclass-list type are set through YAML or `--set` only."""
    aliases = dict(aliases or {})
    skip = set(skip)
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if key in skip or not f.metadata.get("cli", True) or f.name.startswith("_"):
            continue
        tp = _strip_optional(hints[f.name])
        fmeta = f.metadata
        if dataclasses.is_dataclass(tp):
            flat = bool(fmeta.get("flat"))
            add_config_arguments(parser, tp, aliases=aliases, skip=skip, prefix=f"{key}.",
                                 flag_prefix=flag_prefix if flat else f"{flag_prefix}{f.name.replace('_', '-')}.")  # fmt: skip
            continue
        origin = typing.get_origin(tp)
        inner = typing.get_args(tp)
        if origin is dict or tp is Any or tp is dict:
            continue
        if origin in (list, tuple) and inner and dataclasses.is_dataclass(inner[0]):
            continue
        help_text = fmeta.get("help") or comments.get(f.name, "")
        default = _default_of(f)
        if default not in (dataclasses.MISSING, None) and not dataclasses.is_dataclass(default):
            shown = to_dict(default)
            help_text = f"{help_text} (default: {shown})" if help_text else f"default: {shown}"
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        kwargs: dict[str, Any] = {"dest": _DEST + key, "default": argparse.SUPPRESS, "help": help_text}
        scalar = typing.get_args(tp)[0] if origin in (list, tuple) and typing.get_args(tp) else tp
        kwargs["metavar"] = fmeta.get("metavar") or (
            "PATH" if fmeta.get("path") else {int: "N", float: "X"}.get(scalar, "VALUE")
        )
        choices = fmeta.get("choices")
        if choices is None and origin is typing.Literal:
            choices = inner
        if choices is not None:
            kwargs["choices"] = [str(c) for c in choices]
            if not fmeta.get("metavar"):
                kwargs["metavar"] = "{" + ",".join(kwargs["choices"]) + "}"
        if fmeta.get("positional") and not fmeta.get("metavar"):
            kwargs["metavar"] = f.name.upper()
        if tp is bool:
            kwargs.pop("metavar")
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin in (list, tuple):
            kwargs["nargs"] = "+"
        if fmeta.get("positional"):
            dest = kwargs.pop("dest")
            kwargs["nargs"] = "*" if origin in (list, tuple) else "?"
            parser.add_argument(dest, **kwargs)
            continue
        names = [_flag(flag_prefix + f.name)] + list(fmeta.get("flags", ())) + list(aliases.get(key, ()))
        names = list(dict.fromkeys(names))
        taken = set(getattr(parser, "_option_string_actions", {}))
        names = [n for n in names if n not in taken]
        if names:
            parser.add_argument(*names, **kwargs)


def defer_config_arguments(parser: argparse.ArgumentParser, loader: Any, **kwargs: Any) -> None:
    """`add_config_arguments(parser, loader(), **kwargs)` once this command is chosen (`complete_parser`), so
    `imagebert --help` does not import torch for every command's settings class."""
    parser.__dict__.setdefault("_imagebert_deferred", []).append((loader, kwargs))


def complete_parser(parser: argparse.ArgumentParser) -> None:
    """Run the deferred flag generation of `parser`."""
    for loader, kwargs in parser.__dict__.pop("_imagebert_deferred", []):
        add_config_arguments(parser, loader(), **kwargs)


def add_config_file_arguments(parser: argparse.ArgumentParser, kind: str | None = None, *,
                              positional: bool = False) -> None:  # fmt: skip
    """`--config FILE_OR_NAME` (or a positional CONFIG) and repeatable `--set KEY=VALUE`."""
    where = f" (see `imagebert config list`{f', {kind}/...' if kind else ''})"
    if positional:
        parser.add_argument("config", nargs="?", default=None, metavar="CONFIG",
                            help="YAML file or shipped config name" + where)  # fmt: skip
        parser.add_argument("--config", dest="config_flag", default=None, metavar="FILE",
                            help=argparse.SUPPRESS)  # fmt: skip
    else:
        parser.add_argument("--config", default=None, metavar="FILE",
                            help="YAML file or shipped config name" + where)  # fmt: skip
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any setting by its dotted key, e.g. --set a.b=3 (repeatable; after flags)")  # fmt: skip
    parser.set_defaults(config_kind=kind)


def cli_overrides(args: argparse.Namespace, cls: type | None = None) -> list[str]:
    """Generated flags given on the command line, as `key=value` overrides (path fields absolute against the
    working directory); then the `--set` items."""
    path_keys = dict(path_field_keys(cls)) if cls is not None else {}
    known = {f.name for f in dataclasses.fields(cls)} if cls is not None else None
    out = []
    for dest, value in vars(args).items():
        if not dest.startswith(_DEST):
            continue
        key = dest[len(_DEST) :]
        if known is not None and key.split(".")[0] not in known:
            continue  # e.g. the shared --threads of a command whose settings have no `threads` field
        if key in path_keys:
            value = _absolute(value, Path.cwd(), path_keys[key])
        out.append(f"{key}={json.dumps(value)}")
    sets = list(getattr(args, "overrides", None) or [])
    for key, kind in path_keys.items():
        sets = absolutize_overrides(sets, [key], kind=kind)
    return out + sets


def path_field_keys(cls: type, prefix: str = "") -> list[tuple[str, str | None]]:
    """(dotted key, config kind or None) of the fields marked as paths (nested sections included)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = _strip_optional(hints[f.name])
        if _is_path_field(f):
            keys.append((prefix + f.name, f.metadata.get("config")))
        elif dataclasses.is_dataclass(tp):
            keys.extend(path_field_keys(tp, f"{prefix}{f.name}."))
    return keys


def config_argument(args: argparse.Namespace) -> str | None:
    """The config file/name given positionally or with --config (None when neither)."""
    return getattr(args, "config", None) or getattr(args, "config_flag", None)


def load_command_config(cls: type[T], args: argparse.Namespace) -> T:
    """What every command does first: YAML (optional) + generated flags + `--set` -> validated `cls`."""
    config = config_argument(args)
    path = resolve_config_path(config, getattr(args, "config_kind", None)) if config else None
    return load_config(cls, path, cli_overrides(args, cls))
