"""The one config path: flags generated from dataclasses, precedence, the relative-path rule, shipped configs,
the shared --threads flag, and one-line errors (including a missing optional package) caught in cli.main."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from imagebert.cli import build_parser, main
from imagebert.config_utils import (
    ConfigError,
    add_config_arguments,
    add_config_file_arguments,
    complete_parser,
    configs_root,
    load_command_config,
    meta,
)


@dataclass
class Inner:
    rate: float = 0.5  # how fast
    tags: list[str] = field(default_factory=lambda: ["a"])


@dataclass
class Toy:
    source: str = field(metadata=meta("input file", path=True, positional=True))
    out: str = "out"
    steps: int = 3
    mode: Literal["fast", "slow"] = "fast"
    verbose: bool = False
    model: str | None = field(
        default=None, metadata=meta("a model folder", path=True, flags=("--old-model",))
    )
    inner: Inner = field(default_factory=Inner)
    mapping: dict[str, int] = field(default_factory=dict)

    def validate(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")


def _parse(argv):
    p = argparse.ArgumentParser()
    add_config_file_arguments(p)
    add_config_arguments(p, Toy)
    return p, p.parse_args(argv)


def test_flags_come_from_the_dataclass_and_follow_the_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p, _ = _parse([])
    text = p.format_help()
    for flag in (
        "--steps N",
        "--mode {fast,slow}",
        "--verbose, --no-verbose",
        "--inner.rate X",
        "--old-model",
    ):
        assert flag in text, flag
    assert "how fast (default: 0.5)" in " ".join(text.split())  # help from the field's comment
    assert "--mapping" not in text  # mappings are YAML / --set only
    _, args = _parse(["src.txt"])
    toy = load_command_config(Toy, args)
    assert (toy.steps, toy.mode, toy.verbose, toy.inner.tags) == (3, "fast", False, ["a"])
    assert toy.source == str(tmp_path / "src.txt")  # command-line paths: against the working directory

    cfg_dir = tmp_path / "cfgs"
    cfg_dir.mkdir()
    (cfg_dir / "toy.yaml").write_text(
        "source: data/in.txt\nsteps: 5\nmodel: m\ninner: {rate: 2}\nmapping: {x: 1}\n"
    )
    _, args = _parse(["--config", "cfgs/toy.yaml"])
    toy = load_command_config(Toy, args)
    assert toy.steps == 5 and toy.inner.rate == 2.0 and toy.mapping == {"x": 1}
    assert toy.source == str(cfg_dir / "data" / "in.txt")  # YAML paths: against the YAML's folder
    assert toy.model == str(cfg_dir / "m") and toy.out == "out"  # out is not a path field: stays as written
    _, args = _parse(["--config", "cfgs/toy.yaml", "--steps", "7", "--old-model", "here", "--inner.tags", "x", "y",
                      "--verbose", "--set", "steps=9", "--set", "mapping.y=2"])  # fmt: skip
    toy = load_command_config(Toy, args)
    assert toy.steps == 9 and toy.verbose is True and toy.inner.tags == ["x", "y"]  # --set comes last
    assert toy.model == str(tmp_path / "here") and toy.mapping == {"x": 1, "y": 2}


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["s", "--steps", "many"], "steps: expected an integer, got 'many'"),
        (["s", "--steps", "0"], "steps must be >= 1"),
        (["s", "--set", "inner.bogus=1"], "unknown config key 'inner.bogus'"),
        ([], "missing required setting 'source'"),
    ],
)
def test_errors_name_the_field(argv, needle):
    _, args = _parse(argv)
    with pytest.raises(ConfigError, match=needle.replace("'", ".")):
        load_command_config(Toy, args)


def test_yaml_errors_name_the_file(tmp_path):
    (tmp_path / "t.yaml").write_text("source: x\nstesp: 3\n")
    _, args = _parse(["--config", str(tmp_path / "t.yaml")])
    with pytest.raises(ConfigError, match=r"t\.yaml: unknown config key 'stesp'"):
        load_command_config(Toy, args)


def test_config_list_and_show(capsys):
    assert main(["config", "list"]) == 0
    names = capsys.readouterr().out.split()
    assert {"pretrain/demo_cpu", "finetune/demo_cpu", "lait/default", "datasets/coco"} <= set(names)
    assert main(["config", "show", "pretrain/demo_cpu"]) == 0
    assert capsys.readouterr().out == (configs_root() / "pretrain" / "demo_cpu.yaml").read_text()
    assert main(["config", "show", "pretrain/nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pretrain/nope" in err and "pretrain/demo_cpu" in err


def _leaves(parser, path=()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, sub in subs[0].choices.items():
        complete_parser(sub)
        yield from _leaves(sub, (*path, name))


def test_every_command_takes_threads_and_config_commands_take_set():
    parser = build_parser([])
    leaves = dict(_leaves(parser))
    assert len(leaves) >= 20
    for path, leaf in leaves.items():
        assert "--threads" in leaf._option_string_actions, path
        assert "--threads" in leaf.format_help(), path  # every generated help text formats
    for cmd in [("pretrain",), ("finetune",), ("evaluate",), ("extract",), ("features", "import"), ("lait", "run"),
                ("index", "build"), ("index", "add"), ("serve",), ("demo",), ("datasets", "check")]:  # fmt: skip
        assert {"--config", "--set"} <= set(leaves[cmd]._option_string_actions), cmd
    # the old spellings still parse
    old = leaves[("extract",)].parse_args(
        ["imgs", "--out", "s", "--workers", "1", "--no-progress", "--weights", "w"]
    )
    assert vars(old)["_cfg:extraction.num_workers"] == "1" and vars(old)["_cfg:extraction.progress"] is False


def test_threads_flag_is_applied_before_the_command_runs(tmp_path, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        assert main(["config", "list", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
        capsys.readouterr()
        assert main(["config", "list", "--threads", "zero"]) == 2
        assert "--threads: expected a positive integer or 'auto'" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


BLOCKED = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # as if the optional package were not installed
from imagebert.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    ("blocked", "argv", "extra"),
    [
        ("dask,distributed,warcio", ["lait", "run", "x.warc", "--out", "o"], "imagebert[lait]"),
        ("uvicorn", ["serve", "I", "--checkpoint", "C"], "imagebert[serve]"),
    ],
)
def test_missing_optional_package_names_the_extra(tmp_path, blocked, argv, extra):
    (tmp_path / "x.warc").write_bytes(b"")
    proc = subprocess.run([sys.executable, "-c", BLOCKED, blocked, *argv], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert extra in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_shipped_dataset_name_on_the_command_line(tmp_path, monkeypatch, capsys):
    """`datasets check coco` finds the shipped template; its data paths resolve against the cwd."""
    monkeypatch.chdir(tmp_path)
    assert main(["datasets", "check", "coco"]) == 2
    err = capsys.readouterr().err
    assert str(Path(tmp_path) / "data" / "coco") in err and err.count("\n") == 1


def test_evaluate_settings_keep_the_old_checks(capsys):
    assert main(["evaluate", "--checkpoint", "x", "--dataset", "y", "--k", "0"]) == 2
    assert "--k values must be >= 1" in capsys.readouterr().err
    assert main(["evaluate", "--dataset", "y"]) == 2
    assert "checkpoint" in capsys.readouterr().err


def test_building_the_parser_imports_no_command_machinery():
    """Every command builds the whole parser; what only one command needs must load when that command runs."""
    code = (
        "import sys; from imagebert.cli import build_parser; build_parser(['evaluate']); "
        "heavy = [m for m in ('torch', 'transformers', 'warcio', 'imagebert.lait.pipeline') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
