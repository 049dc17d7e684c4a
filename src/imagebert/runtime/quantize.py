"""int8 weights for CPU inference: a copy of a model whose Transformer encoder runs int8 matmuls.

Why: on a CPU without bf16 kernels (AVX2 only) bf16 is emulated and many times slower than fp32, so bf16 cannot
speed scoring up there; int8 can. fbgemm's dynamic int8 linear (weights int8 per tensor, activations quantised
per call) runs the encoder's products at 1.7-2.2x fp32's rate on such a CPU (`benchmarks/bench_int8.py`).

Only the encoder layers' Linear modules are converted: they hold almost all of the FLOPs. The region and word
embeddings, the pooler, the readouts and every score head stay fp32, so a score is still an fp32 product of
fp32 features, and the caller's model is never changed (the work is done on a deep copy).

The implementation is `torch.ao.quantization.quantize_dynamic`, which torch marks as deprecated in favour of the
separate `torchao` package but still ships and runs (torch 2.13); torchao is not a dependency here, and its CPU
int8 path goes through `torch._int_mm`, which runs at ~1 GFLOP/s on this CPU (the probe in docs/performance.md).
If a future torch drops the API, asking for int8 raises a clear error instead of silently scoring in fp32.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator

import torch
from torch import nn

__all__ = [
    "int8_encoder_copy",
    "int8_linear_count",
    "int8_setting_conflict",
    "quantized_engine",
    "require_int8_runtime",
]


def require_int8_runtime(device: torch.device | str) -> None:
    """Raise ValueError unless int8 dynamic quantization can run on `device` with this torch build."""
    device = torch.device(device)
    if device.type != "cpu":
        raise ValueError(
            f"int8 weights run on a CPU only (torch's dynamic int8 kernels are CPU kernels), not on {device}; "
            "on a GPU use --precision bf16 --weights bf16"
        )
    if _quantize_dynamic() is None:
        raise ValueError(
            f"int8 weights need torch.ao.quantization.quantize_dynamic, absent from torch {torch.__version__}"
        )
    engines = torch.backends.quantized.supported_engines
    if not any(e in engines for e in ("x86", "fbgemm", "onednn", "qnnpack")):
        raise ValueError(f"int8 weights: this torch build has no quantized engine (supported: {engines})")


def int8_setting_conflict(
    *, device: str, precision: str, compile: str = "off", weights: str = "int8"
) -> str | None:
    """Why a command's settings cannot run with int8 weights (`weights` "int8" or "int8-static"; None when they
    can): the one rule the CLIs share, checked before any model loads. int8 weights take fp32 activations on a
    CPU, without --compile on (int8-static compiles its own layer stack)."""
    flag = f"--weights {weights}"
    if precision in ("bf16", "fp16"):
        return f"{flag} runs in fp32 activations; drop --precision {precision} (or use fp32 / auto)"
    if device != "auto" and torch.device(device).type != "cpu":  # "auto" means the CPU for int8
        return (
            f"{flag} runs on a CPU only, not --device {device}; on a GPU use --precision bf16 --weights bf16"
        )
    if compile == "on":
        return f"{flag} and --compile on do not combine (use --compile off)"
    return None


def _quantize_dynamic():  # noqa: ANN202
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError:
        return None
    return quantize_dynamic


def _encoders(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from transformers.models.bert.modeling_bert import BertEncoder

    return [(name, mod) for name, mod in model.named_modules() if isinstance(mod, BertEncoder)]


def int8_encoder_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` in eval mode, fp32 everywhere except the Linear layers of its BERT encoder(s),
    which become dynamically quantised int8 Linear layers packed for the quantized engine in effect
    (`quantized_engine`). Raises ValueError for a model with no BERT encoder."""
    require_int8_runtime("cpu")
    quantize_dynamic = _quantize_dynamic()
    resident = copy.deepcopy(model).eval().float()
    encoders = _encoders(resident)
    if not encoders:
        raise ValueError(f"int8 weights: {type(model).__name__} has no transformers BertEncoder to quantise")
    with warnings.catch_warnings():
        # torch's deprecation notice for torch.ao.quantization (see the module docstring), once per layer
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*deprecated.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        for _, encoder in encoders:
            quantize_dynamic(encoder, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return resident


@contextlib.contextmanager
def quantized_engine(name: str) -> Iterator[None]:
    """Pack int8 weights for another of torch's quantized engines inside the block (`int8_encoder_copy` packs
    for the engine in effect, `torch.backends.quantized.engine`, torch's default "x86"). Packed layers keep their
    engine after the block; `benchmarks/bench_int8.py` compares the engines. Raises ValueError for an engine
    this torch build lacks."""
    engines = torch.backends.quantized.supported_engines
    if name not in engines:
        raise ValueError(f"quantized engine {name!r} is not in this torch build (supported: {engines})")
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def int8_linear_count(model: nn.Module) -> int:
    """How many dynamically quantised int8 Linear layers `model` holds (0 for an unconverted model)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    return sum(isinstance(m, DynamicInt8Linear) for m in model.modules())
