"""Deprecated location (one release): the distributed helpers live in `imagebert.runtime.distributed`."""

from __future__ import annotations

from imagebert.runtime.distributed import (
    DistInfo,
    all_gather_object,
    all_reduce_sum,
    barrier,
    broadcast_object,
    init_distributed,
    resolve_device,
    shutdown,
)

__all__ = [
    "DistInfo",
    "all_gather_object",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "init_distributed",
    "resolve_device",
    "shutdown",
]
