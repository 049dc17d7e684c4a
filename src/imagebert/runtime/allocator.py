"""Keep freed tensor memory in the process on CPU (glibc malloc tuning) instead of handing it back to the kernel.

A training step frees and reallocates the same activation and gradient buffers every step. With glibc's
defaults, buffers above the (dynamic) mmap threshold are unmapped on free and the heap top is trimmed, so the
next step page-faults and zero-fills them again: on the 2-core dev VM that system time swung from 0.15 to 1.44 s
per BERT-base fp32 step (of ~5.4 s user time) and was the main source of noise between repetitions
(benchmarks/results/allocator.md). Raising the mmap and trim thresholds keeps those pages mapped. The cost is
that the process holds on to its peak heap (RSS does not shrink after a large batch), which suits a trainer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import sys
from typing import Any

ALLOCATOR_SETTINGS = ("tuned", "system")

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's upper limit on 64-bit; larger blocks are always mmapped
TRIM_THRESHOLD = 1024 * 1024 * 1024  # free heap top kept before trimming (mallopt takes a C int)
TOP_PAD = 256 * 1024 * 1024  # grow the heap in steps this size (fewer brk calls)

_applied = False


def tune_cpu_allocator(setting: str = "tuned") -> bool:
    """Apply `setting` ("tuned" or "system") to this process's malloc; True where the tuning is in effect.

    Only glibc on Linux has these knobs; elsewhere (musl, macOS, Windows) this is a no-op returning False.
    The tuning cannot be undone cleanly, so "system" after "tuned" leaves it in place (and says so: True).
    """
    global _applied
    if setting not in ALLOCATOR_SETTINGS:
        raise ValueError(f"allocator setting must be one of {', '.join(ALLOCATOR_SETTINGS)}, got {setting!r}")
    if setting == "system" or _applied:
        return _applied
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (_M_TOP_PAD, TOP_PAD),
        )
    )
    _applied = ok
    return ok


def allocator_in_effect() -> str:
    """ "tuned" once `tune_cpu_allocator` has raised this process's thresholds, else "system" (for reports)."""
    return "tuned" if _applied else "system"


CPU_ALLOCATOR_HELP = (
    "tuned: raise glibc's malloc thresholds so repeated passes reuse freed buffers instead of page-faulting them "
    "back (imagebert.runtime.allocator); system: leave malloc alone"
)


def cpu_allocator_field(default: str = "tuned") -> Any:
    """The `cpu_allocator` setting of the commands that run the model (flag `--cpu-allocator tuned|system`)."""
    from imagebert.config_utils import meta

    return dataclasses.field(default=default, metadata=meta(CPU_ALLOCATOR_HELP))
