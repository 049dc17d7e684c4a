"""The task heads. Each runs only on the rows it is given: the callers gather masked positions first."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from imagebert.modeling.configuration import ImageBertConfig


class MaskedLanguageModelHead(nn.Module):
    """BERT's MLM head (dense, activation, LayerNorm, then the word-embedding matrix), tied by construction:
    the decoder reads the word-embedding weight directly, so there is one tensor to save and to update."""

    def __init__(self, config: ImageBertConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self._word_embeddings = [word_embeddings]  # a list keeps it out of this module's state dict

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.LayerNorm(self.act(self.dense(hidden)))
        return F.linear(hidden, self._word_embeddings[0].weight, self.bias)


class RegionHeads(nn.Module):
    """MOC (one FC to the detector classes) and MRFR (one FC back to the RoI feature width), as in the paper."""

    def __init__(self, config: ImageBertConfig) -> None:
        super().__init__()
        self.moc = nn.Linear(config.hidden_size, config.num_object_classes)
        self.mrfr = nn.Linear(config.hidden_size, config.visual_feature_dim)


def contrastive_loss(
    text_embeds: torch.Tensor, image_embeds: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matched (text_i, image_i) pairs, both L2-normalised.

    Rows that share an image are not de-duplicated: callers pass one caption per image when that matters.
    """
    logits = logit_scale.exp().clamp(max=100.0) * text_embeds @ image_embeds.t()
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))
