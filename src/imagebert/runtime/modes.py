"""Train/eval mode switching as one context manager.

Why: validation, scoring and hard-negative mining each switched a model to eval mode and back by hand, and a
forgotten or exception-skipped `.train(was_training)` leaves dropout off for the rest of a run. `eval_mode`
restores the exact previous mode of every submodule (not just the root flag), also when the body raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["eval_mode", "preserve_modes", "train_mode"]


@contextlib.contextmanager
def _mode(model: nn.Module, training: bool | None) -> Iterator[nn.Module]:
    saved = [(m, m.training) for m in model.modules()]
    if training is not None:
        model.train(training)
    try:
        yield model
    finally:
        for m, was in saved:
            m.training = was


def preserve_modes(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """Change nothing on entry; on exit put every submodule back in the mode it had (hooks may switch modes)."""
    return _mode(model, None)


def eval_mode(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """`with eval_mode(model):` runs the body in eval mode and restores every submodule's mode afterwards."""
    return _mode(model, False)


def train_mode(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """The counterpart of `eval_mode` (a frozen submodule that was in eval mode goes back to eval mode)."""
    return _mode(model, True)
