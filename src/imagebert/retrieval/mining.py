"""Negative sampling and online hard-negative mining for fine-tuning.

Mining (not in the paper, which only takes the hardest of its sampled negatives in the triplet loss): for each
positive pair draw a random pool of wrong candidates, score the pool with the current model without gradients,
and train on the highest-scoring ones. Both directions: wrong captions for the image, wrong images for the caption.
"""

from __future__ import annotations

import numpy as np
import torch


def sample_negative_images(
    rng: np.random.Generator, positive_image: int, num_images: int, count: int
) -> np.ndarray:
    """`count` distinct images other than the positive one (with replacement only if the gallery is too small)."""
    if num_images < 2:
        raise ValueError("negative images need at least 2 images")
    replace = count > num_images - 1
    picks = rng.choice(num_images - 1, size=count, replace=replace)
    return picks + (picks >= positive_image)  # skip the positive image


def sample_negative_captions(
    rng: np.random.Generator, positive_image: int, caption_image: np.ndarray, count: int, max_tries: int = 100
) -> np.ndarray:
    """`count` captions that do not describe the positive image (never a caption of the same image)."""
    n = len(caption_image)
    out = np.empty(0, dtype=np.int64)
    for _ in range(max_tries):
        picks = rng.integers(0, n, size=count * 2)
        picks = picks[caption_image[picks] != positive_image]
        out = np.concatenate([out, picks])
        if out.size >= count:
            return out[:count]
    raise ValueError(f"cannot find {count} captions of images other than image {positive_image}")


def select_hard(
    scores: torch.Tensor | np.ndarray,
    is_wrong: torch.Tensor | np.ndarray,
    keep: int,
    *,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """Per row, the indices of the `keep` highest-scoring wrong candidates (ties: lower index first); with
    `temperature` > 0, `keep` wrong candidates drawn without replacement with p proportional to exp(score / T).

    scores, is_wrong: [B, pool]. Right candidates (is_wrong False) are never selected; a row with fewer than
    `keep` wrong candidates raises, since repeating one would silently weaken the batch.
    """
    if temperature > 0:
        s = torch.as_tensor(scores, dtype=torch.float32).detach().cpu()
        w = torch.as_tensor(is_wrong).cpu().bool()
        if s.shape != w.shape:
            raise ValueError(f"scores {tuple(s.shape)} and is_wrong {tuple(w.shape)} differ in shape")
        if (w.sum(dim=1) < keep).any():
            raise ValueError(f"a row has fewer than {keep} wrong candidates")
        logits = (s / temperature).masked_fill(~w, float("-inf"))
        probs = torch.softmax(logits - logits.max(dim=1, keepdim=True).values, dim=1)
        return torch.multinomial(probs, keep, replacement=False, generator=generator).numpy()
    s = torch.as_tensor(scores, dtype=torch.float32).detach().cpu().numpy()
    w = np.asarray(torch.as_tensor(is_wrong).cpu().numpy(), dtype=bool)
    if s.shape != w.shape:
        raise ValueError(f"scores {s.shape} and is_wrong {w.shape} differ in shape")
    if (w.sum(axis=1) < keep).any():
        raise ValueError(f"a row has fewer than {keep} wrong candidates")
    masked = np.where(w, s, -np.inf)
    return np.argsort(-masked, axis=1, kind="stable")[:, :keep]
