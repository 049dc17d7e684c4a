"""`torch.compile` as a setting, and the shape bucketing that keeps it from recompiling on every batch.

Why a setting and not always on: compiling the BERT-base encoder takes one to two minutes on a CPU, which a short
evaluation or test never earns back; on CUDA a long run earns it back many times, so "auto" means on for CUDA
and off elsewhere. Why buckets: a compiled graph is specialised to its input shapes, and length-sorted batches
come in many text lengths and region counts; padding each batch up to a few bucket sizes (and the last, short
batch up to the full batch) bounds the number of graphs to (text buckets x region buckets) instead of one per
batch. Padding rows repeat the first row and padding positions are masked, so real rows' scores are unchanged up
to the rounding of a differently shaped matmul.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

COMPILE_SETTINGS = ("off", "on", "auto")


def resolve_compile(setting: str | bool, device: str | torch.device) -> bool:
    """'on'/True -> True, 'off'/False -> False, 'auto' -> True on CUDA only."""
    if isinstance(setting, bool):
        return setting
    if setting not in COMPILE_SETTINGS:
        raise ValueError(f"compile must be one of {COMPILE_SETTINGS}, got {setting!r}")
    if setting == "auto":
        return torch.device(device).type == "cuda"
    return setting == "on"


def compile_module(module: torch.nn.Module, device: str | torch.device, *, training: bool = False) -> Any:
    """torch.compile with static shapes (`dynamic=False`): the buckets give a handful of graphs, each specialised.
    Default mode (no CUDA graphs), so nothing here depends on a capturable step."""
    del device, training  # one policy for now; the arguments keep call sites stable when it grows
    return torch.compile(module, dynamic=False)


# a CUDA training run this long earns back compiling the layers (tens of seconds) many times over
COMPILE_AUTO_MIN_STEPS = 2000


def compile_for_training(model: torch.nn.Module, pad_to_multiple: int = 16) -> str:
    """Compile what a training step spends its FLOPs on, in place, so checkpoints keep their keys: the encoder
    layers when the model (or its `base_model`) offers `compile_layers`, else the whole module. Returns which."""
    base = getattr(model, "base_model", model)
    if hasattr(base, "compile_layers"):
        base.compile_layers(pad_to_multiple)
        return "encoder layers"
    model.compile(dynamic=False)
    return "whole model"


def bucket(n: int, multiple: int, cap: int | None = None) -> int:
    """n rounded up to a multiple of `multiple`, never above `cap` (and never below n)."""
    if n <= 0:
        return n
    up = -(-n // multiple) * multiple
    return max(n, min(up, cap)) if cap is not None else up


@dataclass
class ShapeBuckets:
    """Pads a scorer batch (input_ids, attention_mask, region_features, region_locations, region_mask) to bucketed
    shapes. `batch`: the batch dimension every batch is padded to; text and region lengths round up to
    multiples of `text_multiple` / `region_multiple`, capped at the model's maxima."""

    batch: int
    text_multiple: int = 8
    region_multiple: int = 16
    max_text: int | None = None
    max_regions: int | None = None

    def shape(self, rows: int, text_len: int, regions: int) -> tuple[int, int, int]:
        return (
            max(rows, self.batch),
            bucket(text_len, self.text_multiple, self.max_text),
            bucket(regions, self.region_multiple, self.max_regions),
        )

    def pad(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ids = batch["input_ids"]
        rows, t = ids.shape
        r = batch["region_features"].shape[1]
        rows2, t2, r2 = self.shape(rows, t, r)
        out = {}
        for key, value in batch.items():
            length = t2 if key in ("input_ids", "attention_mask") else r2
            cur = value.shape[1]
            if length > cur:  # zeros: pad token id 0 and mask 0
                pad = value.new_zeros((value.shape[0], length - cur, *value.shape[2:]))
                value = torch.cat([value, pad], dim=1)
            if rows2 > rows:  # repeat the first row: a valid input whose score is thrown away
                value = torch.cat([value, value[:1].expand(rows2 - rows, *value.shape[1:])], dim=0)
            out[key] = value
        return out
