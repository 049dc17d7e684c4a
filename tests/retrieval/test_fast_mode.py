"""Fast mode: re-ranking the top k; with k = gallery size it is exactly exhaustive."""

import numpy as np

from imagebert.retrieval.evaluate import EvalOptions, evaluate_gallery
from imagebert.retrieval.metrics import image_retrieval_ranks, recall_at_k, text_retrieval_ranks
from imagebert.retrieval.rerank import (
    candidate_mask,
    rerank_image_retrieval_ranks,
    rerank_text_retrieval_ranks,
    topk_candidates,
)
from imagebert.retrieval.scorers import Gallery

from .conftest import make_records


def test_topk_is_stable_on_ties():
    s = np.array([[0.5, 0.9, 0.5, 0.9]], dtype=np.float32)
    assert topk_candidates(s, 3).tolist() == [[1, 3, 0]]


def test_full_depth_rerank_equals_exhaustive_on_random_matrices_with_ties():
    rng = np.random.default_rng(0)
    ci = np.repeat(np.arange(7), 5)
    for _ in range(5):
        first = rng.normal(size=(35, 7)).astype(np.float32)
        exact = rng.integers(0, 4, size=(35, 7)).astype(np.float32)  # heavy ties
        need, _, _ = candidate_mask(first, 7, 35)
        assert need.all()
        assert (
            rerank_image_retrieval_ranks(first, exact, ci, need) == image_retrieval_ranks(exact, ci)
        ).all()
        assert (rerank_text_retrieval_ranks(first, exact, ci, need) == text_retrieval_ranks(exact, ci)).all()


def test_shallow_rerank_by_hand():
    # 3 images, 1 caption each. Caption 0: first stage puts image 0 3rd -> outside k=2 -> rank k + (wrong items
    # outside the candidates scoring >= it in the first stage) = 2 + 0.
    ci = np.array([0, 1, 2])
    first = np.array([[0.1, 0.9, 0.5], [0.0, 1.0, 0.2], [0.3, 0.2, 0.8]], dtype=np.float32)
    second = np.full((3, 3), np.nan, dtype=np.float32)
    need, ir_c, _ = candidate_mask(first, 2, 1)
    second[need] = 0.0
    second[1, 1], second[1, 2] = 0.2, 0.7  # the cross-encoder demotes caption 1's image below image 2
    second[2, 2], second[2, 0] = 0.9, 0.1
    # k = 2 per caption, 1 per image: each image's top caption is already among the captions' top 2 images
    assert need.sum() == 6 and not need[0, 0]
    assert ir_c.tolist() == [[1, 2], [1, 2], [2, 0]]
    ranks = rerank_image_retrieval_ranks(first, second, ci, need)
    assert ranks.tolist() == [2, 1, 0]


def test_every_scored_pair_of_a_query_is_reranked():
    # 2 images, 2 captions each; first stage: image 1's own top-1 caption is caption 0 (wrong), but caption 3's
    # top-1 image is image 1, so the pair (3, 1) is scored anyway and re-ranks image 1's list
    ci = np.array([0, 0, 1, 1])
    first = np.array([[0.1, 0.9], [0.9, 0.1], [0.6, 0.5], [0.1, 0.8]], dtype=np.float32)
    need, _, tr_c = candidate_mask(first, 1, 1)
    assert tr_c[1].tolist() == [0] and need[3, 1]
    second = np.where(need, 0.0, np.nan).astype(np.float32)
    second[3, 1], second[0, 1] = 2.0, 1.0  # the cross-encoder prefers image 1's own caption 3
    assert rerank_text_retrieval_ranks(first, second, ci, need)[1] == 0
    # from its own candidate alone (caption 0, wrong) image 1 would rank its best caption behind it
    own_only = np.zeros_like(need)
    own_only[tr_c[1], 1] = True
    assert rerank_text_retrieval_ranks(first, second, ci, own_only)[1] >= 1
    # a caption whose right image was only scored through that image's own top k is re-ranked too
    assert rerank_image_retrieval_ranks(first, second, ci, need)[3] == 0


def test_fast_mode_with_k_equal_to_gallery_is_exhaustive_end_to_end(tiny_model_and_collator):
    model, collator = tiny_model_and_collator
    records, captions = make_records(6, seed=1)
    g = Gallery.from_records(records, [(c.image_id, c.text) for c in captions])
    opts = EvalOptions(mode="both", ks_fast=[3, 30], block_captions=8, block_images=4, precision="fp32")
    res = evaluate_gallery(model, collator, g, "flickr1k", opts)["flickr1k"]
    ex, full, shallow = res["exhaustive"], res["fast k=30"], res["fast k=3"]
    for key in ("image_retrieval", "text_retrieval", "rsum"):
        assert full[key] == ex[key]
    assert full["cross_encoder_pairs"] == ex["cross_encoder_pairs"] == 30 * 6
    assert shallow["cross_encoder_pairs"] < ex["cross_encoder_pairs"]
    # and the metric is not vacuous: exhaustive recall here is a real number below 100
    assert 0 < ex["rsum"] < 600


def test_fast_scores_are_bit_identical_to_exhaustive(tiny_model_and_collator):
    from imagebert.retrieval.engine import score_matrix
    from imagebert.retrieval.scorers import ModelPairScorer

    model, collator = tiny_model_and_collator
    records, captions = make_records(5, seed=2)
    g = Gallery.from_records(records, [(c.image_id, c.text) for c in captions])
    scorer = ModelPairScorer(model, collator, g, precision="bf16", batch_size=7)
    full, _ = score_matrix(scorer, 25, 5, block_captions=10, block_images=3)
    sparse, stats = score_matrix(
        scorer, 25, 5, need=np.ones((25, 5), bool), block_captions=10, block_images=3
    )
    assert np.array_equal(full, sparse)
    # bf16 autocast, but the score head runs in fp32: scores stay distinct instead of collapsing into ties
    assert len(np.unique(full)) > 0.9 * full.size
    r = recall_at_k(full, g.caption_image)
    assert r.num_captions == 25 and stats.pairs_scored == 125


def test_fast_mode_refuses_untrained_contrastive_projections(tmp_path, capsys):
    """A checkpoint pre-trained the paper's way (no ITC) has random projections: the CLI says so, exit 2."""
    import torch

    from imagebert.cli import main
    from imagebert.modeling import ImageBertForPreTraining, load_tokenizer

    from .conftest import tiny_model_config, write_karpathy_dataset

    ckpt = tmp_path / "paper_ckpt"
    torch.manual_seed(0)
    ImageBertForPreTraining(tiny_model_config(itc_trained_steps=0)).save_pretrained(ckpt)
    load_tokenizer().save_pretrained(ckpt)
    data = write_karpathy_dataset(tmp_path / "data", {"test": 4})
    args = ["evaluate", "--checkpoint", str(ckpt), "--dataset", str(data), "--split", "test", "--protocol",
            "flickr1k", "--device", "cpu"]  # fmt: skip
    assert main([*args, "--mode", "fast", "--k", "2", "--out", str(tmp_path / "fast")]) == 2
    err = capsys.readouterr().err
    assert "contrastive (ITC) projections were never trained" in err and "task_itc=true" in err
    assert main([*args, "--mode", "exhaustive", "--out", str(tmp_path / "ex")]) == 0


def test_eager_attention_evaluates_the_same_and_hands_the_model_back(tiny_model_and_collator):
    model, collator = tiny_model_and_collator
    records, captions = make_records(5, seed=3)
    g = Gallery.from_records(records, [(c.image_id, c.text) for c in captions])
    before = model.config._attn_implementation
    res = {}
    for attention in ("sdpa", "eager"):
        opts = EvalOptions(mode="both", ks_fast=[2], precision="fp32", attention=attention)
        res[attention] = evaluate_gallery(model, collator, g, "flickr1k", opts)["flickr1k"]
        assert model.config._attn_implementation == before
    for label in ("exhaustive", "fast k=2"):
        assert res["eager"][label]["rsum"] == res["sdpa"][label]["rsum"]
