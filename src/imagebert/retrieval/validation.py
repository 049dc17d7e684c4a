"""Validation during fine-tuning, in one of two forms.

Gallery mode (`validation.num_images > 0`, the default): every pair of a fixed sub-gallery of validation images and
all their captions, scored exhaustively and reported with the same R@K as `imagebert evaluate`. Sampled mode
(`num_images: 0`): each query against its positive(s) and a fixed set of sampled candidates; cheaper, but with few
candidates R@5/R@10 saturate and the best checkpoint is picked on noise.

Full-gallery evaluation costs |captions| x |images| cross-encoder passes; this costs queries x (candidates + 1)
and tracks it closely enough to pick the best checkpoint. The candidate sets are drawn once (seeded), so every
validation of a run sees the same problems and the numbers are comparable across steps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagebert.retrieval.metrics import recall_at_k, recall_from_ranks
from imagebert.retrieval.scorers import Gallery, ModelPairScorer


@dataclass
class ValidationPlan:
    ir_queries: np.ndarray  # [Q] caption rows
    ir_candidates: np.ndarray  # [Q, 1 + N] image columns, the positive first
    tr_queries: np.ndarray  # [Q'] image columns
    tr_candidates: np.ndarray  # [Q', C] caption rows (all own captions first, then N wrong ones)
    tr_num_own: np.ndarray  # [Q'] how many leading candidates are own captions


def make_plan(gallery: Gallery, num_queries: int, num_candidates: int, seed: int = 0) -> ValidationPlan:
    """Draw the validation problems once. num_queries 0 = every caption / image."""
    rng = np.random.default_rng(seed)
    n_cap, n_img = gallery.num_captions, gallery.num_images
    ci = np.asarray(gallery.caption_image)
    if n_img < 2:
        raise ValueError("validation needs at least 2 images")
    n_neg_img = min(num_candidates, n_img - 1)
    q = (
        np.arange(n_cap)
        if num_queries in (0, None) or num_queries >= n_cap
        else rng.choice(n_cap, num_queries, replace=False)
    )
    ir_cand = np.empty((len(q), 1 + n_neg_img), dtype=np.int64)
    for r, c in enumerate(q):
        wrong = rng.choice(n_img - 1, n_neg_img, replace=False)
        wrong = wrong + (wrong >= ci[c])
        ir_cand[r] = np.concatenate([[ci[c]], wrong])
    qi = (
        np.arange(n_img)
        if num_queries in (0, None) or num_queries >= n_img
        else rng.choice(n_img, num_queries, replace=False)
    )
    own_lists = [np.nonzero(ci == i)[0] for i in qi]
    width = max(len(o) for o in own_lists) + num_candidates
    tr_cand = np.full((len(qi), width), -1, dtype=np.int64)
    num_own = np.empty(len(qi), dtype=np.int64)
    for r, (i, own) in enumerate(zip(qi, own_lists)):
        others = np.nonzero(ci != i)[0]
        wrong = rng.choice(others, min(num_candidates, len(others)), replace=False)
        row = np.concatenate([own, wrong])
        tr_cand[r, : len(row)] = row
        num_own[r] = len(own)
    return ValidationPlan(q, ir_cand, qi, tr_cand, num_own)


def run_validation(
    scorer: ModelPairScorer, plan: ValidationPlan, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """R@K both ways on the plan's mini-galleries (pessimistic ties), and their sum as `val_rsum`."""
    ci = np.asarray(scorer.gallery.caption_image)
    caps = np.concatenate([np.repeat(plan.ir_queries, plan.ir_candidates.shape[1])])
    imgs = plan.ir_candidates.reshape(-1)
    tr_valid = plan.tr_candidates >= 0
    tr_caps = plan.tr_candidates[tr_valid]
    tr_imgs = np.broadcast_to(plan.tr_queries[:, None], plan.tr_candidates.shape)[tr_valid]
    scores = scorer.score_pairs(np.concatenate([caps, tr_caps]), np.concatenate([imgs, tr_imgs]))
    ir_scores = scores[: len(caps)].reshape(plan.ir_candidates.shape)
    ir_ranks = (ir_scores[:, 1:] >= ir_scores[:, :1]).sum(axis=1)
    tr_scores = np.full(plan.tr_candidates.shape, -np.inf, dtype=np.float32)
    tr_scores[tr_valid] = scores[len(caps) :]
    tr_ranks = np.empty(len(plan.tr_queries), dtype=np.int64)
    for r in range(len(plan.tr_queries)):
        row = tr_scores[r][tr_valid[r]]
        own = ci[plan.tr_candidates[r][tr_valid[r]]] == plan.tr_queries[r]
        tr_ranks[r] = int((row[~own] >= row[own].max()).sum())
    ir = recall_from_ranks(ir_ranks, ks)
    tr = recall_from_ranks(tr_ranks, ks)
    out = {f"val_ir_r{k}": v for k, v in ir.items()} | {f"val_tr_r{k}": v for k, v in tr.items()}
    out["val_rsum"] = float(sum(ir.values()) + sum(tr.values()))
    return out


@dataclass
class GalleryPlan:
    """Gallery-mode validation: the sub-gallery itself (all its pairs are scored)."""

    gallery: Gallery


def make_gallery_plan(gallery: Gallery, num_images: int, seed: int = 0) -> GalleryPlan:
    """A fixed seeded choice of `num_images` validation images (all of them when fewer) with all their captions."""
    n = gallery.num_images
    if n < 2:
        raise ValueError("validation needs at least 2 images")
    rng = np.random.default_rng(seed)
    images = np.sort(rng.choice(n, min(num_images, n), replace=False))
    captions = np.nonzero(np.isin(np.asarray(gallery.caption_image), images))[0]
    return GalleryPlan(gallery.subset(captions, images))


def run_gallery_validation(scorer: ModelPairScorer, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """All pairs of the scorer's gallery; the same R@K (pessimistic ties) and R-sum as the evaluation."""
    g = scorer.gallery
    caps, imgs = np.meshgrid(np.arange(g.num_captions), np.arange(g.num_images), indexing="ij")
    scores = scorer.score_pairs(caps.reshape(-1), imgs.reshape(-1)).reshape(g.num_captions, g.num_images)
    res = recall_at_k(scores, np.asarray(g.caption_image), ks)
    out = {f"val_ir_r{k}": float(v) for k, v in res.ir.items()} | {
        f"val_tr_r{k}": float(v) for k, v in res.tr.items()
    }
    out["val_rsum"] = float(sum(res.ir.values()) + sum(res.tr.values()))
    out["val_gallery"] = f"{g.num_images} images x {g.num_captions} captions"
    return out


class RetrievalValidator:
    """The fine-tuning validation as a Trainer evaluation callback (`imagebert.training.trainer.Evaluator`).

    A `GalleryPlan` runs gallery mode, a `ValidationPlan` the sampled mode. Each result is also appended, with its
    step, to `log_path` (validation.jsonl) so a run's validation history reads in one file. `scorer` holds the
    model being trained; the model the Trainer passes is the same object and is not needed again.
    """

    def __init__(
        self,
        scorer: ModelPairScorer | None,
        plan: ValidationPlan | GalleryPlan | None,
        log_path: str | Path | None = None,
    ) -> None:
        self.scorer = scorer
        self.plan = plan
        self.log_path = Path(log_path) if log_path is not None else None

    def __call__(self, model: Any, step: int) -> dict[str, Any]:
        if self.scorer is None or self.plan is None:
            raise RuntimeError("RetrievalValidator has no scorer/plan (it runs on the rank that built them)")
        if isinstance(self.plan, GalleryPlan):
            record: dict[str, Any] = run_gallery_validation(self.scorer)
        else:
            record = run_validation(self.scorer, self.plan)
        if self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": step, **record}) + "\n")
        return record
