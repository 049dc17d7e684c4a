"""Fast mode: rank all pairs with a cheap first stage, re-score only the top k per query with the cross-encoder.

``first[c, i]`` is the first-stage similarity (text-only and image-only passes of the same model), ``second`` the
cross-encoder score matrix, NaN where the pair was not re-scored. The final ranking of a query is its k candidates
ordered by the cross-encoder, followed by every other item ordered by the first stage. With k equal to the gallery
size every pair is a candidate and the ranks are exactly the exhaustive ones (same tie rule as ``metrics``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from imagebert.retrieval.metrics import DEFAULT_KS, RecallResult, recall_from_ranks

_ROW_CHUNK = 1024


def topk_candidates(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores per row; ties go to the lower index (stable, so runs are reproducible)."""
    scores = np.asarray(scores, dtype=np.float32)
    k = min(int(k), scores.shape[1])
    if k <= 0:
        raise ValueError("k must be positive")
    out = np.empty((scores.shape[0], k), dtype=np.int64)
    for start in range(0, scores.shape[0], _ROW_CHUNK):
        block = scores[start : start + _ROW_CHUNK]
        out[start : start + block.shape[0]] = np.argsort(-block, axis=1, kind="stable")[:, :k]
    return out


def candidate_mask(first: np.ndarray, k_ir: int, k_tr: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs the cross-encoder must score: each caption's top-k_ir images and each image's top-k_tr captions.

    Returns (mask [C, I] bool, ir_candidates [C, k_ir], tr_candidates [I, k_tr]).
    """
    first = np.asarray(first, dtype=np.float32)
    ir_cand = topk_candidates(first, k_ir)
    tr_cand = topk_candidates(first.T, k_tr)
    mask = np.zeros(first.shape, dtype=bool)
    np.put_along_axis(mask, ir_cand, True, axis=1)
    mask_t = np.zeros(first.shape[::-1], dtype=bool)
    np.put_along_axis(mask_t, tr_cand, True, axis=1)
    mask |= mask_t.T
    return mask, ir_cand, tr_cand


def rerank_image_retrieval_ranks(
    first: np.ndarray, second: np.ndarray, caption_image: np.ndarray, ir_cand: np.ndarray
) -> np.ndarray:
    """Caption -> image ranks after re-ranking each caption's candidates by the cross-encoder."""
    caption_image = np.asarray(caption_image, dtype=np.int64)
    k = ir_cand.shape[1]
    ranks = np.empty(len(caption_image), dtype=np.int64)
    for c in range(len(caption_image)):
        gt = caption_image[c]
        cand = ir_cand[c]
        if (cand == gt).any():
            s = np.asarray(second[c, cand], dtype=np.float32)
            g = np.float32(second[c, gt])
            if np.isnan(g) or np.isnan(s).any():
                raise ValueError(f"caption {c}: a re-ranking candidate was not scored by the cross-encoder")
            ranks[c] = int((s >= g).sum()) - 1
        else:
            row = np.asarray(first[c], dtype=np.float32)
            g = row[gt]
            ahead = int((row >= g).sum()) - 1 - int((row[cand] >= g).sum())
            ranks[c] = k + ahead
    return ranks


def rerank_text_retrieval_ranks(
    first: np.ndarray, second: np.ndarray, caption_image: np.ndarray, tr_cand: np.ndarray
) -> np.ndarray:
    """Image -> caption ranks after re-ranking each image's candidate captions by the cross-encoder."""
    caption_image = np.asarray(caption_image, dtype=np.int64)
    n_img = tr_cand.shape[0]
    k = tr_cand.shape[1]
    ranks = np.full(n_img, -1, dtype=np.int64)
    order = np.argsort(caption_image, kind="stable")
    bounds = np.searchsorted(caption_image[order], np.arange(n_img + 1))
    for i in range(n_img):
        own = order[bounds[i] : bounds[i + 1]]
        if own.size == 0:
            continue
        cand = tr_cand[i]
        is_own = caption_image[cand] == i
        if is_own.any():
            s = np.asarray(second[cand, i], dtype=np.float32)
            if np.isnan(s).any():
                raise ValueError(f"image {i}: a re-ranking candidate was not scored by the cross-encoder")
            best = s[is_own].max()
            ranks[i] = int((s[~is_own] >= best).sum())
        else:
            col = np.asarray(first[:, i], dtype=np.float32)
            best = col[own].max()
            wrong_ge = int((col >= best).sum()) - int((col[own] >= best).sum())
            ranks[i] = k + wrong_ge - int((col[cand] >= best).sum())
    return ranks


def rerank_recall(
    first: np.ndarray,
    second: np.ndarray,
    caption_image: np.ndarray,
    ir_cand: np.ndarray,
    tr_cand: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
) -> RecallResult:
    ir = recall_from_ranks(rerank_image_retrieval_ranks(first, second, caption_image, ir_cand), ks)
    tr = recall_from_ranks(rerank_text_retrieval_ranks(first, second, caption_image, tr_cand), ks)
    return RecallResult(ir=ir, tr=tr, num_captions=int(first.shape[0]), num_images=int(first.shape[1]))
