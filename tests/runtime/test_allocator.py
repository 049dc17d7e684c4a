"""The CPU allocator lever: the tuning is applied where glibc has it, and it does stop the page-faulting.

What can fail: mallopt not found or refusing a value (the tuning silently not in effect), the tuned process
faulting its freed buffers back in, "system" tuning anyway, an unknown setting accepted by the function or by
`training.cpu_allocator`. The fault check runs in child processes because mallopt changes the whole process and
cannot be undone.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap

import pytest

from imagebert.runtime.allocator import tune_cpu_allocator

# One "step": twelve 8 MiB buffers (under glibc's 32 MiB mmap ceiling) allocated, touched and freed together, as a
# step's activations are: 10 steps touch 245,760 pages. Tuned, the freed buffers stay mapped and later steps reuse
# them (0-4,096 faults in 10 steps here). The system allocator's count depends on where its heap landed: from
# 2,048 to 245,440 faults in runs on the same machine, so it is printed, not compared against.
_FAULTS = textwrap.dedent(
    """
    import resource, sys
    import torch
    from imagebert.runtime.allocator import tune_cpu_allocator
    applied = tune_cpu_allocator(sys.argv[1])
    def step():
        xs = [torch.ones(2 << 20) for _ in range(12)]
        return sum(float(x[-1]) for x in xs)
    step()
    step()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    print(int(applied), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    """
)


def _faults(setting: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", _FAULTS, setting], capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "1", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt exists only on Linux")
def test_tuned_allocator_keeps_freed_buffers_mapped():
    sys_applied, sys_faults = _faults("system")
    tuned_applied, tuned_faults = _faults("tuned")
    assert not sys_applied and tuned_applied
    touched = 10 * 12 * (8 << 20) // resource.getpagesize()
    assert tuned_faults < touched / 20, (tuned_faults, touched, sys_faults)


def test_unknown_setting_is_refused():
    with pytest.raises(ValueError, match="tuned, system"):
        tune_cpu_allocator("jemalloc")


def test_trainer_config_validates_the_setting():
    from imagebert.config_utils import ConfigError
    from imagebert.training.trainer import TrainerConfig

    assert TrainerConfig(steps=1).cpu_allocator == "tuned"
    TrainerConfig(steps=1, cpu_allocator="system").validate()
    with pytest.raises(ConfigError, match="training.cpu_allocator"):
        TrainerConfig(steps=1, cpu_allocator="fast").validate()


@pytest.mark.parametrize(
    ("argv", "module", "settings", "section"),
    [
        (["evaluate", "--checkpoint", "C", "--dataset", "d.yaml"], "retrieval", "EvaluateSettings", None),
        (
            ["index", "build", "C", "--dataset", "d.yaml", "--out", "I"],
            "serve",
            "IndexBuildSettings",
            "embed",
        ),
        (
            ["index", "add", "I", "--checkpoint", "C", "--dataset", "d.yaml"],
            "serve",
            "IndexAddSettings",
            "embed",
        ),
        (["serve", "I", "--checkpoint", "C"], "serve", "ServeSettings", None),
    ],
)
def test_every_command_that_runs_the_model_takes_the_setting(argv, module, settings, section, capsys):
    """Default tuned, `--cpu-allocator system` taken, anything else refused by the parser (exit 2, flag named)."""
    import importlib

    from imagebert.cli import build_parser
    from imagebert.config_utils import load_command_config

    cls = getattr(importlib.import_module(f"imagebert.{module}.cli"), settings)
    parser = build_parser()
    for extra, want in (([], "tuned"), (["--cpu-allocator", "system"], "system")):
        s = load_command_config(cls, parser.parse_args([*argv, *extra]))
        assert (getattr(s, section) if section else s).cpu_allocator == want
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([*argv, "--cpu-allocator", "jemalloc"])
    assert exc.value.code == 2 and "--cpu-allocator" in capsys.readouterr().err
