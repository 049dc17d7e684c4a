"""Recall@K for image-text retrieval from a caption x image score matrix.

One orientation everywhere: ``scores[c, i]`` is the score of caption ``c`` against image ``i`` (rows captions,
columns images) and ``caption_image[c]`` is the column of caption ``c``'s own image.

Tie rule (pessimistic, deterministic): a wrong candidate whose score EQUALS the best correct one is ranked ahead
of it. So a constant scorer gets R@K = 0 for K below the gallery size, never a lucky hit that depends on the
order the candidates happen to be stored in. Ranks are 0-based; a query hits at K when ``rank < K``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_KS = (1, 5, 10)
_ROW_CHUNK = 2048  # rows per chunk: bounds the temporary boolean matrix for 25k x 5k score matrices


def _check(scores: np.ndarray, caption_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores)
    caption_image = np.asarray(caption_image, dtype=np.int64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be a 2-d caption x image matrix, got shape {scores.shape}")
    if caption_image.shape != (scores.shape[0],):
        raise ValueError(
            f"caption_image has shape {caption_image.shape}, expected ({scores.shape[0]},) (one image per caption)"
        )
    if caption_image.size and (caption_image.min() < 0 or caption_image.max() >= scores.shape[1]):
        raise ValueError("caption_image holds an image index outside the score matrix")
    return scores, caption_image


def image_retrieval_ranks(scores: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
    """Caption -> image: for each caption, how many wrong images score >= its own image (0 = top)."""
    scores, caption_image = _check(scores, caption_image)
    n = scores.shape[0]
    ranks = np.empty(n, dtype=np.int64)
    for start in range(0, n, _ROW_CHUNK):
        block = np.asarray(scores[start : start + _ROW_CHUNK], dtype=np.float32)
        if np.isnan(block).any():
            raise ValueError("score matrix has missing (NaN) entries; the evaluation is incomplete")
        rows = np.arange(block.shape[0])
        gt = block[rows, caption_image[start : start + _ROW_CHUNK]]
        # >= counts the gt image itself once: subtract it.
        ranks[start : start + block.shape[0]] = (block >= gt[:, None]).sum(axis=1) - 1
    return ranks


def text_retrieval_ranks(scores: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
    """Image -> caption: for each image, how many wrong captions score >= its best own caption.

    An image without any caption gets rank -1 and is left out of the recall (it has no correct answer).
    """
    scores, caption_image = _check(scores, caption_image)
    n_cap, n_img = scores.shape
    gt_scores = np.empty(n_cap, dtype=np.float32)
    for start in range(0, n_cap, _ROW_CHUNK):
        block = np.asarray(scores[start : start + _ROW_CHUNK], dtype=np.float32)
        if np.isnan(block).any():
            raise ValueError("score matrix has missing (NaN) entries; the evaluation is incomplete")
        gt_scores[start : start + block.shape[0]] = block[
            np.arange(block.shape[0]), caption_image[start : start + _ROW_CHUNK]
        ]
    best = np.full(n_img, -np.inf, dtype=np.float32)
    np.maximum.at(best, caption_image, gt_scores)
    count = np.zeros(n_img, dtype=np.int64)
    for start in range(0, n_cap, _ROW_CHUNK):
        block = np.asarray(scores[start : start + _ROW_CHUNK], dtype=np.float32)
        count += (block >= best[None, :]).sum(axis=0)
    # Remove the image's own captions that reach its best score (at least the best one itself).
    own = np.zeros(n_img, dtype=np.int64)
    np.add.at(own, caption_image, (gt_scores >= best[caption_image]).astype(np.int64))
    ranks = count - own
    has_caption = np.zeros(n_img, dtype=bool)
    has_caption[caption_image] = True
    ranks[~has_caption] = -1
    return ranks


def recall_from_ranks(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[int, float]:
    """Percentage of queries with rank < K; queries with rank -1 (no answer exists) are left out."""
    ranks = np.asarray(ranks)
    valid = ranks[ranks >= 0]
    if valid.size == 0:
        raise ValueError("no query has a correct answer in the gallery")
    return {int(k): float(100.0 * (valid < k).mean()) for k in ks}


@dataclass
class RecallResult:
    """R@K both ways. ``ir`` = image retrieval (caption -> image), ``tr`` = text retrieval (image -> caption)."""

    ir: dict[int, float]
    tr: dict[int, float]
    num_captions: int = 0
    num_images: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def rsum(self) -> float:
        return float(sum(self.ir.values()) + sum(self.tr.values()))

    def to_dict(self) -> dict:
        return {
            "image_retrieval": {f"R@{k}": v for k, v in self.ir.items()},
            "text_retrieval": {f"R@{k}": v for k, v in self.tr.items()},
            "rsum": self.rsum,
            "num_captions": self.num_captions,
            "num_images": self.num_images,
            **self.extra,
        }


def recall_at_k(
    scores: np.ndarray, caption_image: np.ndarray, ks: Sequence[int] = DEFAULT_KS
) -> RecallResult:
    """R@K both ways on a full score matrix (the exhaustive protocol)."""
    ir = recall_from_ranks(image_retrieval_ranks(scores, caption_image), ks)
    tr = recall_from_ranks(text_retrieval_ranks(scores, caption_image), ks)
    return RecallResult(
        ir=ir, tr=tr, num_captions=int(np.shape(scores)[0]), num_images=int(np.shape(scores)[1])
    )


def fold_indices(
    num_images: int, caption_image: np.ndarray, fold_size: int = 1000, num_folds: int = 5
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(caption rows, image columns) of each fold: consecutive images in gallery order, their captions only."""
    if num_images < fold_size * num_folds:
        raise ValueError(
            f"{num_folds} folds of {fold_size} images need {fold_size * num_folds}, have {num_images}"
        )
    caption_image = np.asarray(caption_image, dtype=np.int64)
    folds = []
    for f in range(num_folds):
        images = np.arange(f * fold_size, (f + 1) * fold_size)
        captions = np.nonzero((caption_image >= images[0]) & (caption_image <= images[-1]))[0]
        folds.append((captions, images))
    return folds


def mean_results(results: Sequence[RecallResult]) -> RecallResult:
    """Metric-wise mean (the COCO 1k protocol reports the mean of the five folds' R@K)."""
    ks = list(results[0].ir)
    ir = {k: float(np.mean([r.ir[k] for r in results])) for k in ks}
    tr = {k: float(np.mean([r.tr[k] for r in results])) for k in ks}
    return RecallResult(
        ir=ir,
        tr=tr,
        num_captions=results[0].num_captions,
        num_images=results[0].num_images,
        extra={"folds": [r.to_dict() for r in results]},
    )


def fold_average_recall(
    scores: np.ndarray,
    caption_image: np.ndarray,
    fold_size: int = 1000,
    num_folds: int = 5,
    ks: Sequence[int] = DEFAULT_KS,
) -> RecallResult:
    """COCO 1k: R@K on each 1k-image fold (images in gallery order, each fold with its own captions), averaged."""
    scores, caption_image = _check(scores, caption_image)
    results = []
    for captions, images in fold_indices(scores.shape[1], caption_image, fold_size, num_folds):
        sub = np.asarray(scores[captions][:, images])
        results.append(recall_at_k(sub, caption_image[captions] - images[0], ks))
    return mean_results(results)
