"""Which attention kernel the encoder runs, as a setting: the fastest one depends on the device and the dtype.

transformers' BERT layers offer "sdpa" (`torch.nn.functional.scaled_dot_product_attention`) and "eager" (two
batched matmuls around a softmax, which autocast runs in fp32). On CUDA SDPA's fused kernels are the standard
choice. On a CPU in bf16 training, SDPA's fused CPU kernel takes no dropout, so a training step (attention
dropout 0.1) runs SDPA's math fallback, which upcasts the bf16 queries, keys and values to fp32 and does both
attention products in fp32 (seen in a dispatch log of the BERT-base step, 2026-12-08), while eager attention
keeps the products in bf16: on the 2-core development VM the eager kernel made the BERT-base bf16 training step
about 12% faster and level with VisualBERT, whose attention is the eager kind (benchmarks/results/levers.md,
docs/performance.md); in fp32 it was not faster. Hence "auto": eager on a CPU in bf16, SDPA everywhere else. It
is not the default for training or evaluation (docs/performance.md: the demo A/B). The two differ at bf16
rounding only: eager rounds the attention probabilities to bf16 before multiplying them with the values, SDPA
keeps them in fp32.
"""

from __future__ import annotations

import torch

ATTENTION_SETTINGS = ("auto", "sdpa", "eager")


def resolve_attention(setting: str, device: str | torch.device, dtype: torch.dtype | None) -> str:
    """'sdpa' or 'eager' for a run on `device` whose autocast dtype is `dtype` (None: fp32)."""
    if setting not in ATTENTION_SETTINGS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_SETTINGS)}, got {setting!r}")
    if setting != "auto":
        return setting
    return "eager" if torch.device(device).type == "cpu" and dtype == torch.bfloat16 else "sdpa"


def set_attention(
    model: torch.nn.Module, setting: str, device: str | torch.device, dtype: torch.dtype | None
) -> str:
    """Switch `model` (a transformers model) to the resolved kernel in place and return it. The choice is a
    runtime one: `save_pretrained` does not record it, so a checkpoint loads with transformers' default."""
    impl = resolve_attention(setting, device, dtype)
    if getattr(model.config, "_attn_implementation", None) != impl:
        model.set_attn_implementation(impl)
    return impl
