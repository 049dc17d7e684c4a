"""One precision rule and one mode switch for trainer, scorers and mining."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from imagebert.retrieval import scorers
from imagebert.runtime.modes import eval_mode, preserve_modes, train_mode
from imagebert.runtime.precision import autocast, autocast_for, resolve_precision


def test_precision_names():
    assert resolve_precision("fp32", "cpu") is None
    assert resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16
    assert resolve_precision("fp16", "cpu") is torch.float16
    assert resolve_precision("auto", "cpu") in (torch.bfloat16, None)
    with pytest.raises(ValueError, match="auto, fp32, bf16 or fp16"):
        resolve_precision("half", "cpu")
    # the scorers use the same functions (not copies that could drift)
    assert scorers.resolve_precision is resolve_precision and scorers.autocast is autocast


def test_bf16_kernel_detection_matches_the_cpu_capability():
    """oneDNN has bf16 kernels from AVX-512 up; an AVX2-only CPU (AMD Zen 3, say) emulates bf16."""
    from imagebert.runtime.precision import cpu_runs_bf16_natively

    capability = torch.backends.cpu.get_cpu_capability()
    if capability in ("DEFAULT", "AVX2"):
        assert not cpu_runs_bf16_natively()
    elif capability.startswith("AVX512"):
        assert cpu_runs_bf16_natively()
    assert resolve_precision("auto", "cpu") == (torch.bfloat16 if cpu_runs_bf16_natively() else None)


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_that_emulates_it_warns_and_still_runs(monkeypatch, recwarn, native):
    from imagebert.runtime import precision

    monkeypatch.setattr(precision, "cpu_runs_bf16_natively", lambda: native)
    assert precision.resolve_precision("bf16", "cpu") is torch.bfloat16  # still what was asked for
    assert precision.resolve_precision("auto", "cpu") is (torch.bfloat16 if native else None)
    emulated = [w for w in recwarn if "emulates it" in str(w.message)]
    assert len(emulated) == (0 if native else 1)
    if emulated:
        assert emulated[0].category is RuntimeWarning and "choose fp32" in str(emulated[0].message)
        assert emulated[0].filename == __file__  # points at the line that asked for bf16


def test_autocast_contexts():
    x = torch.ones(2, 2)
    with autocast("cpu", torch.bfloat16):
        assert (x @ x).dtype == torch.bfloat16
    with autocast("cpu", None):
        assert (x @ x).dtype == torch.float32
    with autocast_for("bf16", "cpu"):
        assert (x @ x).dtype == torch.bfloat16


def _net() -> nn.Module:
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.BatchNorm1d(2))
    net[2].eval()  # a frozen submodule kept in eval mode inside a training model
    return net


def test_eval_mode_restores_every_submodule_even_on_errors():
    net = _net()
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert net.training and net[1].training and not net[2].training
    with pytest.raises(RuntimeError), eval_mode(net):
        raise RuntimeError("scoring failed")
    assert net.training and not net[2].training
    net.eval()
    with train_mode(net):
        assert all(m.training for m in net.modules())
    assert not any(m.training for m in net.modules())


def test_preserve_modes_undoes_a_hooks_switch():
    net = _net()
    with preserve_modes(net):
        assert net.training  # unchanged on entry
        net.eval()
    assert net.training and not net[2].training
