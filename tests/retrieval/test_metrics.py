"""R@K on hand-made score matrices whose answers are worked out by hand."""

import numpy as np
import pytest

from imagebert.retrieval.metrics import (
    fold_average_recall,
    image_retrieval_ranks,
    recall_at_k,
    text_retrieval_ranks,
)


def _five_captions(num_images: int) -> np.ndarray:
    return np.repeat(np.arange(num_images), 5)


def test_perfect_scores_give_full_recall():
    ci = _five_captions(3)
    scores = np.zeros((15, 3), dtype=np.float32)
    scores[np.arange(15), ci] = 1.0
    r = recall_at_k(scores, ci)
    assert r.ir == {1: 100.0, 5: 100.0, 10: 100.0}
    assert r.tr == {1: 100.0, 5: 100.0, 10: 100.0}
    assert r.rsum == 600.0


def test_image_retrieval_ranks_by_hand():
    # 2 images, captions 0,1 -> image 0, captions 2,3 -> image 1
    ci = np.array([0, 0, 1, 1])
    scores = np.array(
        [
            [0.9, 0.1],  # right, rank 0
            [0.2, 0.8],  # wrong image first, rank 1
            [0.3, 0.4],  # right, rank 0
            [0.5, 0.5],  # tie: pessimistic -> rank 1
        ],
        dtype=np.float32,
    )
    assert image_retrieval_ranks(scores, ci).tolist() == [0, 1, 0, 1]
    r = recall_at_k(scores, ci, ks=(1, 2))
    assert r.ir == {1: 50.0, 2: 100.0}


def test_text_retrieval_takes_the_best_of_an_images_captions():
    # 3 images x 5 captions. Image 0: its best caption (row 4) beats everything -> rank 0 although its other
    # captions are ranked last. Image 1: two wrong captions score above its best -> rank 2. Image 2: its best
    # caption ties with one wrong caption -> pessimistic rank 1.
    ci = _five_captions(3)
    scores = np.zeros((15, 3), dtype=np.float32)
    scores[:, 0] = 0.5
    scores[0:4, 0] = 0.0
    scores[4, 0] = 0.99
    scores[:, 1] = 0.1
    scores[5:10, 1] = 0.6
    scores[0, 1] = 0.7
    scores[11, 1] = 0.65
    scores[:, 2] = 0.0
    scores[10:15, 2] = 0.3
    scores[3, 2] = 0.3
    ranks = text_retrieval_ranks(scores, ci)
    assert ranks.tolist() == [0, 2, 1]
    r = recall_at_k(scores, ci, ks=(1, 2, 3))
    assert r.tr == pytest.approx({1: 100 / 3, 2: 200 / 3, 3: 100.0})


def test_constant_scorer_gets_no_lucky_hits():
    ci = _five_captions(4)
    scores = np.full((20, 4), 0.25, dtype=np.float32)
    r = recall_at_k(scores, ci, ks=(1, 3, 4))
    assert r.ir == {1: 0.0, 3: 0.0, 4: 100.0}
    # text retrieval: 15 wrong captions tie with the best own one -> rank 15
    assert text_retrieval_ranks(scores, ci).tolist() == [15, 15, 15, 15]


def test_tie_rule_does_not_depend_on_storage_order():
    rng = np.random.default_rng(0)
    ci = _five_captions(6)
    scores = rng.integers(0, 3, size=(30, 6)).astype(np.float32)  # many ties
    perm_img = rng.permutation(6)
    inv = np.argsort(perm_img)
    perm_cap = rng.permutation(30)
    permuted = scores[perm_cap][:, perm_img]
    ci_permuted = inv[ci[perm_cap]]
    a = recall_at_k(scores, ci, ks=(1, 2, 3))
    b = recall_at_k(permuted, ci_permuted, ks=(1, 2, 3))
    assert a.ir == b.ir and a.tr == b.tr


def test_coco1k_fold_average():
    # 4 images in 2 folds of 2 (stand-ins for 5 folds of 1000). Fold 0 is perfect; in fold 1 every caption
    # prefers the other image of its fold. The 5k-style global matrix also has cross-fold distractors that a
    # fold must ignore: image 2 scores 9 for fold-0 captions (outside their fold).
    ci = np.repeat(np.arange(4), 2)
    scores = np.zeros((8, 4), dtype=np.float32)
    scores[np.arange(8), ci] = 1.0
    scores[0:4, 2] = 9.0
    scores[4:6, 3] = 2.0
    scores[6:8, 2] = 2.0
    r = fold_average_recall(scores, ci, fold_size=2, num_folds=2, ks=(1, 2, 3))
    assert r.ir == {1: 50.0, 2: 100.0, 3: 100.0}
    # fold 1 text retrieval: both wrong captions (score 2) rank above the image's own two -> rank 2
    assert r.tr == {1: 50.0, 2: 50.0, 3: 100.0}
    assert [f["image_retrieval"]["R@1"] for f in r.extra["folds"]] == [100.0, 0.0]
    # the global (5k-style) protocol sees the distractor
    assert recall_at_k(scores, ci, ks=(1,)).ir[1] == 0.0


def test_nan_scores_are_refused():
    scores = np.array([[np.nan, 0.0]], dtype=np.float32)
    with pytest.raises(ValueError, match="incomplete"):
        recall_at_k(scores, np.array([0]))
