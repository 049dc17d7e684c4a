"""One place that turns a precision name into an autocast dtype and an autocast context.

Names: "fp32" (no autocast), "bf16", "fp16" and "auto" (bf16 where the hardware runs it, fp16 on GPUs without
bf16, fp32 on CPUs without bf16 kernels). Training accepts only the explicit names (a run's numerics must not
depend on the machine it lands on); scoring also accepts "auto", where only speed is at stake.

bf16 asked for on a CPU without bf16 kernels (oneDNN needs AVX-512 or AMX; an AVX2-only CPU such as AMD Zen 3
has neither) still runs, but torch emulates it, many times slower than fp32 (`benchmarks/bench_bf16_cpu.py`
measures it), so asking for bf16 there warns with the way out.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch

__all__ = [
    "PRECISIONS",
    "autocast",
    "autocast_for",
    "cpu_runs_bf16_natively",
    "resolve_precision",
    "warn_if_bf16_emulated",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype | None:
    """'fp32' -> None (no autocast); 'bf16'/'fp16' as asked; 'auto' -> bf16 where the hardware has it."""
    device = torch.device(device)
    if precision == "fp32":
        return None
    if precision == "bf16":
        warn_if_bf16_emulated(device)
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_runs_bf16_natively() else None
    return None


@functools.cache
def cpu_runs_bf16_natively() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX-512 or AMX); on AVX2 alone bf16 is emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def warn_if_bf16_emulated(device: torch.device | str) -> None:
    """Warn (once per calling line) when bf16 is asked for on a CPU that would emulate it; it still runs."""
    if torch.device(device).type == "cpu" and not cpu_runs_bf16_natively():
        warnings.warn(
            "bf16 on a CPU without bf16 kernels (AVX2 only, no AVX-512 / AMX): torch emulates it, many times "
            "slower than fp32 (docs/performance.md, 'bf16 on CPUs without bf16 kernels'); choose fp32 for "
            "training and extraction, fp32 or auto for scoring",
            RuntimeWarning,
            stacklevel=3,
        )


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device`'s type; a no-op context for `None` (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def autocast_for(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """`autocast(device, resolve_precision(precision, device))` in one call."""
    return autocast(device, resolve_precision(precision, device))


class MasterWeights:
    """bf16 weights in the model, fp32 master copies in the optimizer (`training.weights: bf16`).

    Why: under autocast every forward casts each fp32 weight to bf16 again, and the backward casts the gradients
    back; with bf16-resident weights those copies go away, while the update still happens in fp32 (a bf16 weight
    cannot absorb an update 1e-4 of its size), so the run keeps fp32's optimisation. Build it before the model is
    wrapped in DDP (DDP sizes its buckets from the parameters' dtype). Checkpoints hold the fp32 masters.
    """

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        self.pairs: list[tuple[torch.nn.Parameter, torch.nn.Parameter]] = []
        for param in model.parameters():  # shared (tied) parameters appear once
            if param.requires_grad and param.is_floating_point():
                master = torch.nn.Parameter(param.detach().clone().float())
                self.pairs.append((param, master))
                param.data = param.data.to(dtype)
        self.by_model_param = {id(p): m for p, m in self.pairs}

    def grads_to_masters(self) -> None:
        """Model gradients (bf16) -> the masters' fp32 gradients; the model's are freed."""
        for param, master in self.pairs:
            master.grad = None if param.grad is None else param.grad.detach().float()
            param.grad = None

    @torch.no_grad()
    def masters_to_model(self) -> None:
        for param, master in self.pairs:
            param.copy_(master)

    @contextlib.contextmanager
    def full_precision(self):
        """The model's parameters *are* the fp32 masters inside this block (saving, loading a checkpoint)."""
        resident = [param.data for param, _ in self.pairs]
        for param, master in self.pairs:
            param.data = master.data
        try:
            yield
        finally:
            for (param, _), data in zip(self.pairs, resident, strict=True):
                param.data = data
            self.masters_to_model()
