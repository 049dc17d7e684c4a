"""The task heads. Each runs only on the rows it is given: the callers gather masked positions first.

The MLM head is transformers' own `BertOnlyMLMHead` (module `cls.predictions`, as in `BertForPreTraining`), so
a BERT checkpoint's MLM transform and bias load by name and the decoder is tied to the word embeddings through
`_tied_weights_keys` (which is what makes `resize_token_embeddings` grow the decoder and its bias too).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from imagebert.modeling.configuration import ImageBertConfig


class RegionHeads(nn.Module):
    """MOC (one FC to the detector classes) and MRFR (one FC back to the RoI feature width), as in the paper."""

    def __init__(self, config: ImageBertConfig) -> None:
        super().__init__()
        self.moc = nn.Linear(config.hidden_size, config.num_object_classes)
        self.mrfr = nn.Linear(config.hidden_size, config.visual_feature_dim)


class ScoreHead(nn.Linear):
    """The ITM / retrieval score layer, always computed in fp32 (also under bf16/fp16 autocast).

    bf16 logits carry ~3 significant digits: a model whose scores sit close together (a zero-shot ITM head, an
    early checkpoint) would see most pairs tie, which the pessimistic tie rule of the metrics turns into zero
    recall. The encoder keeps its low-precision speed; only this last (hidden -> 1) layer is fp32.
    """

    computes_in_fp32 = True  # read by callers that used to wrap the head from outside

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            bias = None if self.bias is None else self.bias.float()
            return F.linear(x.float(), self.weight.float(), bias)


def contrastive_loss_from_log_scale(
    text_embeds: torch.Tensor, image_embeds: torch.Tensor, log_logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matched (text_i, image_i) pairs, both L2-normalised.

    Takes the *log* of the logit scale (the learnable `itc_logit_scale` parameter, CLIP-style) and
    exponentiates it here, clamped at 100. Rows that share an image are not de-duplicated: callers pass one
    caption per image when that matters.
    """
    logits = log_logit_scale.exp().clamp(max=100.0) * text_embeds @ image_embeds.t()
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


def contrastive_loss(
    text_embeds: torch.Tensor, image_embeds: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Deprecated name of `contrastive_loss_from_log_scale` (its `logit_scale` is the log of the scale, unlike
    `imagebert.retrieval.losses`' function of the same name); removed in the next release."""
    warnings.warn(
        "imagebert.modeling.heads.contrastive_loss is deprecated: use contrastive_loss_from_log_scale (it "
        "takes the log of the logit scale)",
        DeprecationWarning,
        stacklevel=2,
    )
    return contrastive_loss_from_log_scale(text_embeds, image_embeds, logit_scale)
