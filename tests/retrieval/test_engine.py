"""The block engine: caching, resumption after an interruption, protocols over folds."""

import numpy as np
import pytest

from imagebert.retrieval.engine import score_matrix
from imagebert.retrieval.evaluate import EvalOptions, evaluate_gallery
from imagebert.retrieval.metrics import fold_average_recall, recall_at_k
from imagebert.retrieval.scorers import Gallery, ModelPairScorer

from .conftest import make_records


class _CountingScorer:
    """A deterministic stand-in cross-encoder that counts the pairs it is asked for."""

    def __init__(self) -> None:
        self.pairs = 0

    def score_pairs(self, caption_idx, image_idx):
        self.pairs += len(caption_idx)
        return np.sin(caption_idx * 1.7 + image_idx * 0.3).astype(np.float32)


def test_blocks_cover_the_matrix_and_need_mask_is_respected():
    s = _CountingScorer()
    full, stats = score_matrix(s, 13, 7, block_captions=4, block_images=3)
    c, i = np.meshgrid(np.arange(13), np.arange(7), indexing="ij")
    assert np.array_equal(full, np.sin(c * 1.7 + i * 0.3).astype(np.float32))
    assert stats.pairs_scored == 91 and stats.blocks_scored == 4 * 3
    need = np.zeros((13, 7), bool)
    need[2, 5] = need[12, 0] = True
    s2 = _CountingScorer()
    sparse, _ = score_matrix(s2, 13, 7, need=need, block_captions=4, block_images=3)
    assert s2.pairs == 2 and np.isnan(sparse).sum() == 89 and sparse[2, 5] == full[2, 5]


def test_interrupted_evaluation_resumes_to_the_same_result(tmp_path, tiny_model_and_collator):
    model, collator = tiny_model_and_collator
    records, captions = make_records(6, seed=5)
    g = Gallery.from_records(records, [(c.image_id, c.text) for c in captions])
    scorer = ModelPairScorer(model, collator, g, precision="fp32")
    kw = dict(block_captions=10, block_images=2, fingerprint={"model": "tiny"})
    reference, _ = score_matrix(scorer, 30, 6, **kw)
    cache = tmp_path / "cache"
    partial, st1 = score_matrix(scorer, 30, 6, cache_dir=cache, max_blocks=4, **kw)  # "killed" after 4 blocks
    assert st1.blocks_scored == 4 and np.isnan(partial).any()
    with pytest.raises(ValueError, match="incomplete"):
        recall_at_k(partial, g.caption_image)
    resumed, st2 = score_matrix(scorer, 30, 6, cache_dir=cache, **kw)
    assert st2.blocks_cached == 4 and st2.blocks_scored == 9 - 4
    assert st2.pairs_scored == 180 - 4 * 20
    assert np.array_equal(resumed, reference)
    # a third run scores nothing
    again, st3 = score_matrix(scorer, 30, 6, cache_dir=cache, **kw)
    assert st3.pairs_scored == 0 and np.array_equal(again, reference)
    # a cache made for another model is refused, not silently reused
    with pytest.raises(ValueError, match="different evaluation"):
        score_matrix(
            scorer, 30, 6, cache_dir=cache, block_captions=10, block_images=2, fingerprint={"model": "other"}
        )


def test_protocol_all_reads_the_1k_folds_off_the_5k_matrix(tiny_model_and_collator):
    model, collator = tiny_model_and_collator
    records, captions = make_records(10, seed=6, captions_per_image=2)
    g = Gallery.from_records(records, [(c.image_id, c.text) for c in captions])
    opts = EvalOptions(fold_size=2, num_folds=5, block_captions=6, block_images=4, precision="fp32")
    res = evaluate_gallery(model, collator, g, "all", opts)
    assert set(res) == {"coco5k", "coco1k"}
    scorer = ModelPairScorer(model, collator, g, precision="fp32")
    full, _ = score_matrix(scorer, 20, 10, block_captions=6, block_images=4)
    want5 = recall_at_k(full, g.caption_image).to_dict()
    want1 = fold_average_recall(full, g.caption_image, fold_size=2, num_folds=5).to_dict()
    assert res["coco5k"]["exhaustive"]["rsum"] == pytest.approx(want5["rsum"])
    assert res["coco1k"]["exhaustive"]["rsum"] == pytest.approx(want1["rsum"])
    # the fold-only protocol scores only within-fold pairs and agrees
    only = evaluate_gallery(model, collator, g, "coco1k", opts)["coco1k"]["exhaustive"]
    assert only["cross_encoder_pairs"] == 5 * 4 * 2
    assert only["rsum"] == pytest.approx(want1["rsum"])


def test_fast_mode_on_coco1k_folds_matches_exhaustive_at_full_depth(tiny_model_and_collator):
    model, collator = tiny_model_and_collator
    records, captions = make_records(10, seed=7, captions_per_image=2)
    g = Gallery.from_records(records, [(c.image_id, c.text) for c in captions])
    opts = EvalOptions(mode="both", ks_fast=[1, 4], fold_size=2, num_folds=5, precision="fp32")
    res = evaluate_gallery(model, collator, g, "coco1k", opts)["coco1k"]
    assert res["fast k=4"]["rsum"] == res["exhaustive"]["rsum"]
    assert len(res["fast k=4"]["folds"]) == 5
    # k=1: each caption keeps 1 of its fold's 2 images, each image 1 of 4 captions (union per fold <= 4 + 2)
    assert res["fast k=1"]["cross_encoder_pairs"] <= 5 * (4 + 2)


class _CallRecordingScorer(_CountingScorer):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def score_pairs(self, caption_idx, image_idx):
        self.calls.append(len(caption_idx))
        return super().score_pairs(caption_idx, image_idx)


def test_sparse_blocks_share_a_call_and_full_blocks_keep_their_own():
    from imagebert.retrieval.engine import BlockPlan, call_groups

    rng = np.random.default_rng(0)
    need = rng.random((40, 30)) < 0.1  # fast-mode-like: a few pairs per 10 x 10 block
    s = _CallRecordingScorer()
    sparse, stats = score_matrix(s, 40, 30, need=need, block_captions=10, block_images=10)
    c, i = np.nonzero(need)
    assert np.array_equal(sparse[c, i], np.sin(c * 1.7 + i * 0.3).astype(np.float32))
    assert np.isnan(sparse[~need]).all() and stats.blocks_scored == 12 and s.pairs == need.sum()
    assert len(s.calls) < 12 and max(s.calls) <= 100  # merged, never beyond one full block's worth
    # exhaustive (and every pair needed) makes one call per full block, as before
    plan = BlockPlan(40, 30, 10, 10)
    assert call_groups(plan, list(range(12)), None) == [[b] for b in range(12)]
    assert call_groups(plan, list(range(12)), np.ones((40, 30), bool)) == [[b] for b in range(12)]
    s_full = _CallRecordingScorer()
    score_matrix(s_full, 40, 30, block_captions=10, block_images=10)
    assert s_full.calls == [100] * 12


def test_a_merged_call_that_is_interrupted_resumes_to_the_same_scores(tmp_path):
    need = np.random.default_rng(1).random((40, 30)) < 0.1
    kw = dict(need=need, block_captions=10, block_images=10, fingerprint={"model": "sin"})
    reference, _ = score_matrix(_CountingScorer(), 40, 30, **kw)
    partial, st1 = score_matrix(_CountingScorer(), 40, 30, cache_dir=tmp_path / "c", max_blocks=5, **kw)
    assert st1.blocks_scored == 5 and np.isnan(partial[need]).any()
    resumed, st2 = score_matrix(_CountingScorer(), 40, 30, cache_dir=tmp_path / "c", **kw)
    assert st2.blocks_cached == 5 and st2.blocks_scored == 7
    assert np.array_equal(resumed, reference, equal_nan=True)
