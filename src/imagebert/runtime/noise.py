"""Log records from optional packages that tell an imagebert user nothing, dropped at their source.

Why: with the `int8` extra installed, transformers imports torchao whenever it loads a model, and torchao's
import logs a warning for each CUDA-only extension its wheel ships (they cannot load on a CPU build of torch),
while torch logs one deprecation notice per enum torchao registers. Every command would start with four lines of
noise. Only those exact messages are dropped; anything else the two loggers say still reaches the user.
"""

from __future__ import annotations

import logging

__all__ = ["install_log_filters"]

# logger name -> message fragments whose records are dropped
DROPPED_MESSAGES = {
    "torchao": ("Failed to load ",),
    "torch.utils._pytree": ("is an Enum subclass and is now natively supported by torch.compile",),
}


class _DropKnownNoise(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def install_log_filters() -> None:
    """Attach the filters once per process (idempotent)."""
    for name, fragments in DROPPED_MESSAGES.items():
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownNoise) for f in log.filters):
            log.addFilter(_DropKnownNoise(fragments))
