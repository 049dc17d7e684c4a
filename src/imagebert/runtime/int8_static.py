"""Calibrated ("static") int8 for CPU scoring: the encoder's layer stack exported, quantised with activation scales
measured once on sample batches, and compiled by inductor into oneDNN int8 kernels.

Why beside `imagebert.runtime.quantize`'s dynamic int8: the dynamic Linear measures every input's range on each
call and runs each product as its own kernel, with GELU, the residual adds and LayerNorm in eager fp32 between
them. Here the ranges are fixed by a calibration pass, and inductor fuses the quantise / dequantise steps and the
elementwise work into the int8 products (`torch.ops.onednn.qlinear_pointwise`). On the AVX2-only development host
its steady state scored faster than the dynamic Linear's (`benchmarks/bench_int8.py`, `int8.md` has the figures,
set-up included). The price: a torch.compile of the stack (tens of seconds; with `shapes="dynamic"`, the
default, one graph whose sequence length is symbolic serves every length, with `"static"` one graph per padded
length; rows are padded to the batch by the scorer either way), scores that depend on the calibration sample (the
scorer's sample is fixed by the gallery, so a rerun gives the same scores), and the `torchao` package
(`pip install 'imagebert[int8]'`), where torch's PT2E quantisation lives now.

The quantiser is torchao's `X86InductorQuantizer` with its default static config: weights int8 per output channel,
activations uint8 per tensor, min-max observers. Only the encoder layers are quantised; embeddings, the pooler and
the score head stay fp32, and the caller's model is not touched (the work is done on a deep copy).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = [
    "INT8_SHAPES",
    "STATIC_INT8_SEQUENCE_MULTIPLE",
    "calibrated_int8_copy",
    "default_sequence_multiple",
    "require_static_int8_runtime",
]

# how the compiled stack meets sequence lengths: "dynamic" compiles one graph with a symbolic length, "static" one
# graph per (padded) length; benchmarks/bench_int8.py measures both, set-up and steady state
INT8_SHAPES = ("dynamic", "static")
# with static shapes, sequences are padded (masked) to a multiple of this so the stack meets a few shapes, not one
# per batch. 4, not compile_layers' 16: the padding is int8 work too, and on the demo's short sequences (14-31
# positions) a multiple of 16 cost more than the int8 kernels saved. Dynamic shapes need no padding (multiple 1).
STATIC_INT8_SEQUENCE_MULTIPLE = 4
INSTALL_HINT = "pip install 'imagebert[int8]'"


def _pt2e() -> tuple[Any, Any, Any, Any]:
    """(prepare_pt2e, convert_pt2e, allow_exported_model_train_eval, x86_inductor_quantizer module); ValueError
    naming the extra when torchao is absent."""
    try:
        # (the import's log noise is filtered by imagebert.runtime.noise, installed with the package)
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86q
        from torchao.quantization.pt2e import allow_exported_model_train_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as exc:
        raise ValueError(
            f"--weights int8-static needs torchao's PT2E quantisation, which did not import ({exc}): "
            f"{INSTALL_HINT}, or use --weights int8 (dynamic, no extra package)"
        ) from exc
    return prepare_pt2e, convert_pt2e, allow_exported_model_train_eval, x86q


def default_sequence_multiple(shapes: str) -> int:
    """The sequence padding a `shapes` mode uses unless told otherwise."""
    _check_shapes(shapes)
    return STATIC_INT8_SEQUENCE_MULTIPLE if shapes == "static" else 1


def _check_shapes(shapes: str) -> None:
    if shapes not in INT8_SHAPES:
        raise ValueError(f"int8-static: shapes must be one of {INT8_SHAPES}, got {shapes!r}")


def require_static_int8_runtime(device: torch.device | str) -> None:
    """Raise ValueError unless calibrated int8 can run on `device` here (a CPU, torchao importable)."""
    device = torch.device(device)
    if device.type != "cpu":
        raise ValueError(
            f"int8-static weights run on a CPU only (oneDNN int8 kernels), not on {device}; "
            "on a GPU use --precision bf16 --weights bf16"
        )
    _pt2e()


class _LayerStack(nn.Module):
    """The encoder's layers as one module with tensor-only inputs, the shape torch.export wants."""

    def __init__(self, layers: nn.ModuleList) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden = layer(hidden, mask)
        return hidden


def _as_bool_mask(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """SDPA's [B, 1, T, T] boolean mask (True = attend); None (nothing padded) becomes all True."""
    if mask is None:
        rows, length = hidden.shape[:2]
        return torch.ones(rows, 1, length, length, dtype=torch.bool, device=hidden.device)
    if mask.dtype != torch.bool:
        raise ValueError(f"int8-static: expected SDPA's boolean attention mask, got {mask.dtype}")
    return mask


class CalibratedInt8Layers(nn.Module):
    """Stands in for an encoder's layer list in a scoring copy: one call runs every layer, int8, compiled.
    The model's layer loop sees one "layer", so per-layer hidden states and attention weights are not available
    from such a copy (`ImageBertModel` refuses to return them)."""

    fused_layer_stack = True

    def __init__(self, quantized: nn.Module, shapes: str = "dynamic") -> None:
        super().__init__()
        _check_shapes(shapes)
        self.graph_module = quantized
        self.shapes = shapes
        # dynamic: the sequence dimensions are marked symbolic on every call (rows stay static, the scorer pads
        # them to its batch), so one graph serves every length; static: one graph per length
        self._compiled = torch.compile(quantized, dynamic=None if shapes == "dynamic" else False)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        import torch._dynamo
        from torch._inductor import config as inductor_config

        limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
        # freezing folds the int8 weights into the graph: what lets inductor pick the packed oneDNN kernels
        with (
            inductor_config.patch(freezing=True),
            torch._dynamo.config.patch({limit: 256}),
            warnings.catch_warnings(),
        ):
            # inductor's oneDNN lowering copies its weight zero points with torch.tensor(tensor), which warns once
            # per compiled product; nothing a user can act on
            warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
            mask = _as_bool_mask(hidden, mask)
            if self.shapes == "dynamic":
                # maybe_: should a later torch specialise the length after all, it recompiles rather than fails
                torch._dynamo.maybe_mark_dynamic(hidden, 1)
                torch._dynamo.maybe_mark_dynamic(mask, 2)
                torch._dynamo.maybe_mark_dynamic(mask, 3)
            return self._compiled(hidden, mask)


@torch.no_grad()
def calibrated_int8_copy(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    sequence_multiple: int | None = None,
    shapes: str = "dynamic",
) -> nn.Module:
    """A deep copy of an `ImageBertForRetrieval`-like model (eval, fp32, SDPA attention) whose encoder layers are
    replaced by one `CalibratedInt8Layers` compiled with `shapes` ("dynamic" or "static", see `INT8_SHAPES`);
    activation ranges come from running `batches` (model-input dicts, e.g. a sample of the gallery's pairs)
    through the fp32 copy; sequences are padded to `sequence_multiple` (None: `default_sequence_multiple`).
    ValueError when torchao is missing or no batch is given."""
    _check_shapes(shapes)
    if sequence_multiple is None:
        sequence_multiple = default_sequence_multiple(shapes)
    if sequence_multiple < 1:
        raise ValueError(f"int8-static: sequence_multiple must be >= 1, got {sequence_multiple}")
    prepare_pt2e, convert_pt2e, allow_train_eval, x86q = _pt2e()
    resident = copy.deepcopy(model).eval().float()
    if getattr(resident.config, "_attn_implementation", None) != "sdpa":
        resident.set_attn_implementation("sdpa")
    core = resident.bert
    core.sequence_multiple = int(sequence_multiple)
    layers = core.encoder.layer
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []

    def keep(_module: nn.Module, args: tuple) -> None:
        captured.append((args[0].detach().clone(), _as_bool_mask(args[0], args[1]).clone()))

    hook = layers[0].register_forward_pre_hook(keep)
    try:
        for batch in batches:
            resident(**batch)
    finally:
        hook.remove()
    if not captured:
        raise ValueError("int8-static: no calibration batch was given")
    stack = _LayerStack(layers).eval()
    rows, seq = torch.export.Dim("rows"), torch.export.Dim("sequence")
    hidden0, mask0 = max(captured, key=lambda c: c[0].shape[0] * c[0].shape[1])
    exported = torch.export.export(
        stack, (hidden0, mask0), dynamic_shapes=({0: rows, 1: seq}, {0: rows, 2: seq, 3: seq})
    ).module()
    quantizer = x86q.X86InductorQuantizer().set_global(x86q.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    for hidden, mask in captured:
        prepared(hidden, mask)
    quantized = convert_pt2e(prepared)
    allow_train_eval(quantized)  # the scorer's eval_mode() calls .eval() on the whole copy
    core.encoder.layer = nn.ModuleList([CalibratedInt8Layers(quantized, shapes=shapes)])
    return resident
