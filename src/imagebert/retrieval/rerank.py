"""Fast mode: rank all pairs with a cheap first stage, re-score only the top k per query with the cross-encoder.

``first[c, i]`` is the first-stage similarity (text-only and image-only passes of the same model), ``second`` the
cross-encoder score matrix, NaN where the pair was not re-scored. The cross-encoder scores the union of each
caption's top k images and each image's top k captions; the final ranking of a query is every pair of it that was
scored (its own k and those another query's top k brought in), ordered by the cross-encoder, followed by every
other item ordered by the first stage. With k equal to the gallery size every pair is a candidate and the ranks
are exactly the exhaustive ones (same tie rule as ``metrics``).
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
    first: np.ndarray, second: np.ndarray, caption_image: np.ndarray, scored: np.ndarray
) -> np.ndarray:
    """Caption -> image ranks: the caption's scored images by cross-encoder score, then the others by first stage.

    `scored[c, i]` marks the pairs the cross-encoder scored: the caption's own top k and every image whose top k
    holds the caption. Using all of them costs no pass and makes the result depend less on the first stage.
    """
    caption_image = np.asarray(caption_image, dtype=np.int64)
    ranks = np.empty(len(caption_image), dtype=np.int64)
    for c in range(len(caption_image)):
        gt = caption_image[c]
        cand = np.asarray(scored[c], dtype=bool)
        if cand[gt]:
            s = np.asarray(second[c], dtype=np.float32)
            if np.isnan(s[cand]).any():
                raise ValueError(f"caption {c}: a re-ranking candidate was not scored by the cross-encoder")
            wrong = cand.copy()
            wrong[gt] = False
            ranks[c] = int((s[wrong] >= s[gt]).sum())
        else:
            row = np.asarray(first[c], dtype=np.float32)
            rest = ~cand
            rest[gt] = False
            ranks[c] = int(cand.sum()) + int((row[rest] >= row[gt]).sum())
    return ranks


def rerank_text_retrieval_ranks(
    first: np.ndarray, second: np.ndarray, caption_image: np.ndarray, scored: np.ndarray
) -> np.ndarray:
    """Image -> caption ranks: the image's scored captions by cross-encoder score (its own top k and every caption
    whose top k holds the image), then the others by first stage; -1 for an image without captions."""
    caption_image = np.asarray(caption_image, dtype=np.int64)
    n_img = np.asarray(first).shape[1]
    ranks = np.full(n_img, -1, dtype=np.int64)
    order = np.argsort(caption_image, kind="stable")
    bounds = np.searchsorted(caption_image[order], np.arange(n_img + 1))
    for i in range(n_img):
        own = np.zeros(len(caption_image), dtype=bool)
        own[order[bounds[i] : bounds[i + 1]]] = True
        if not own.any():
            continue
        cand = np.asarray(scored[:, i], dtype=bool)
        if (cand & own).any():
            rows = np.flatnonzero(cand)
            s = np.asarray(second[rows, i], dtype=np.float32)
            if np.isnan(s).any():
                raise ValueError(f"image {i}: a re-ranking candidate was not scored by the cross-encoder")
            is_own = own[rows]
            ranks[i] = int((s[~is_own] >= s[is_own].max()).sum())
        else:
            col = np.asarray(first[:, i], dtype=np.float32)
            best = col[own].max()
            ranks[i] = int(cand.sum()) + int((col[~cand & ~own] >= best).sum())
    return ranks


def rerank_recall(
    first: np.ndarray,
    second: np.ndarray,
    caption_image: np.ndarray,
    scored: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
) -> RecallResult:
    """Recall after re-ranking every query over all the pairs the cross-encoder scored (`scored`, [C, I])."""
    ir = recall_from_ranks(rerank_image_retrieval_ranks(first, second, caption_image, scored), ks)
    tr = recall_from_ranks(rerank_text_retrieval_ranks(first, second, caption_image, scored), ks)
    return RecallResult(ir=ir, tr=tr, num_captions=int(first.shape[0]), num_images=int(first.shape[1]))
