"""The paper's three fine-tuning losses (section 4.4) and the contrastive loss of the fast mode's first stage.

Layout shared by the three pair losses: ``group_scores`` [G, P] holds, for each of G groups (one query with its
candidates), the positive's score in column 0 and P-1 negatives' scores after it. Fine-tuning builds two groups
per positive pair: the image with its caption and P-1 negative captions, and the caption with its image and P-1
negative images (the positive pair is scored once and shared by both groups).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def bce_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on pair logits: -mean(y log sigmoid(s) + (1-y) log(1 - sigmoid(s)))."""
    return F.binary_cross_entropy_with_logits(scores.float(), labels.float())


def ce_loss(group_scores: torch.Tensor) -> torch.Tensor:
    """Multi-class CE: a softmax over each group's P candidates, the positive (column 0) is the target."""
    target = torch.zeros(group_scores.shape[0], dtype=torch.long, device=group_scores.device)
    return F.cross_entropy(group_scores.float(), target)


def triplet_loss(group_scores: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """Hinge on the hardest sampled negative: mean over groups of max(0, margin - s_pos + max_j s_neg_j)."""
    if group_scores.shape[1] < 2:
        raise ValueError("the triplet loss needs at least one negative per group")
    s = group_scores.float()
    hardest = s[:, 1:].max(dim=1).values
    return F.relu(margin - s[:, 0] + hardest).mean()


def contrastive_loss(
    text_emb: torch.Tensor,
    image_emb: torch.Tensor,
    scale: torch.Tensor | float | None = None,
    image_keys: torch.Tensor | None = None,
    *,
    logit_scale: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of L2-normalised (text i, image i) pairs.

    ``scale`` multiplies the cosine similarities as it is (an exponentiated scale, e.g. ``exp(log_scale)`` clamped
    at 100); `imagebert.modeling.heads` has the variant that takes the log scale. ``logit_scale`` is the old,
    misleading name of ``scale`` (deprecated; it is taken as the same exponentiated value).

    ``image_keys`` [B] (e.g. image indices) marks pairs that share an image: another copy of a row's own image
    is dropped from that row's softmax (it is neither a negative nor a second target), so two captions of one
    image in a batch do not cap each other's loss at log 2.
    """
    if logit_scale is not None:
        if scale is not None:
            raise TypeError("contrastive_loss: pass `scale` only (`logit_scale` is its deprecated name)")
        warnings.warn(
            "contrastive_loss(logit_scale=...) is deprecated: the value is an exponentiated scale; pass scale=",
            DeprecationWarning,
            stacklevel=2,
        )
        scale = logit_scale
    if scale is None:
        raise TypeError("contrastive_loss: missing the similarity scale (`scale`)")
    scale = scale.float() if torch.is_tensor(scale) else float(scale)
    logits = scale * (text_emb.float() @ image_emb.float().T)
    target = torch.arange(logits.shape[0], device=logits.device)
    if image_keys is not None:
        keys = image_keys.to(logits.device)
        other_copy = (keys[:, None] == keys[None, :]) & ~torch.eye(
            len(keys), dtype=torch.bool, device=logits.device
        )
        logits = logits.masked_fill(other_copy, float("-inf"))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@dataclass
class LossWeights:
    """Weights of the weighted sum; a zero weight switches that loss off (BCE alone is the paper's best)."""

    bce: float = 1.0
    ce: float = 0.0
    triplet: float = 0.0
    itc: float = 0.0
    margin: float = 0.2


def retrieval_loss(
    pos_scores: torch.Tensor, neg_scores: torch.Tensor, weights: LossWeights
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of BCE, CE and triplet over positives [B] and negatives [B, 2, P-1] (both directions).

    Returns the total (with grad) and each enabled part (unweighted, detached) for logging.
    """
    b = pos_scores.shape[0]
    groups = torch.cat([pos_scores[:, None, None].expand(b, neg_scores.shape[1], 1), neg_scores], dim=2)
    groups = groups.reshape(-1, groups.shape[-1])  # [2B, P]
    total = pos_scores.new_zeros((), dtype=torch.float32)
    parts: dict[str, torch.Tensor] = {}
    if weights.bce:
        all_scores = torch.cat([pos_scores.reshape(-1), neg_scores.reshape(-1)])
        labels = torch.cat(
            [
                torch.ones(b, device=all_scores.device),
                torch.zeros(neg_scores.numel(), device=all_scores.device),
            ]
        )
        v = bce_loss(all_scores, labels)
        total = total + weights.bce * v
        parts["bce"] = v.detach()
    if weights.ce:
        v = ce_loss(groups)
        total = total + weights.ce * v
        parts["ce"] = v.detach()
    if weights.triplet:
        v = triplet_loss(groups, weights.margin)
        total = total + weights.triplet * v
        parts["triplet"] = v.detach()
    return total, parts
