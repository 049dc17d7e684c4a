"""One place that turns a precision name into an autocast dtype and an autocast context.

Names: "fp32" (no autocast), "bf16", "fp16" and "auto" (bf16 where the hardware runs it, fp16 on GPUs without
bf16, fp32 on CPUs without bf16 kernels). Training accepts only the explicit names (a run's numerics must not
depend on the machine it lands on); scoring also accepts "auto", where only speed is at stake.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["PRECISIONS", "autocast", "autocast_for", "resolve_precision"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype | None:
    """'fp32' -> None (no autocast); 'bf16'/'fp16' as asked; 'auto' -> bf16 where the hardware has it."""
    device = torch.device(device)
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        try:
            return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
        except (AttributeError, RuntimeError):
            return None
    return None


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device`'s type; a no-op context for `None` (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def autocast_for(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """`autocast(device, resolve_precision(precision, device))` in one call."""
    return autocast(device, resolve_precision(precision, device))
