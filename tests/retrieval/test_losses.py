"""Each loss against its formula on numbers worked out by hand."""

import math

import pytest
import torch

from imagebert.retrieval.losses import (
    LossWeights,
    bce_loss,
    ce_loss,
    contrastive_loss,
    retrieval_loss,
    triplet_loss,
)


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_bce_matches_formula():
    s = torch.tensor([2.0, -1.0, 0.5])
    y = torch.tensor([1.0, 0.0, 0.0])
    expected = -(math.log(_sig(2.0)) + math.log(1 - _sig(-1.0)) + math.log(1 - _sig(0.5))) / 3
    assert bce_loss(s, y).item() == pytest.approx(expected, rel=1e-6)


def test_ce_is_softmax_over_the_group_with_positive_first():
    g = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 0.0]])
    row0 = -math.log(math.exp(3) / (math.exp(3) + math.exp(1) + 1))
    row1 = -math.log(1 / (1 + math.exp(2) + 1))
    assert ce_loss(g).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_triplet_uses_only_the_hardest_negative():
    g = torch.tensor([[1.0, 0.5, 0.9, -3.0], [2.0, 0.0, 0.1, 0.2]])
    # row 0: max(0, 0.2 - 1.0 + 0.9) = 0.1 ; row 1: max(0, 0.2 - 2.0 + 0.2) = 0
    assert triplet_loss(g, margin=0.2).item() == pytest.approx(0.05, abs=1e-6)
    # the gradient reaches only the positive and the hardest negative of the active row
    g.requires_grad_(True)
    triplet_loss(g, margin=0.2).backward()
    expected = torch.zeros_like(g)
    expected[0, 0], expected[0, 2] = -0.5, 0.5
    assert torch.allclose(g.grad, expected)


def test_weighted_sum_and_shared_positive():
    pos = torch.tensor([1.0, -0.5])
    neg = torch.tensor([[[0.0, 2.0], [0.3, -1.0]], [[1.0, 1.0], [0.0, 0.5]]])  # [B=2, 2 directions, P-1=2]
    w = LossWeights(bce=0.5, ce=2.0, triplet=1.0, margin=1.0)
    total, parts = retrieval_loss(pos, neg, w)
    all_s = torch.cat([pos, neg.reshape(-1)])
    labels = torch.cat([torch.ones(2), torch.zeros(8)])
    groups = torch.tensor([[1.0, 0.0, 2.0], [1.0, 0.3, -1.0], [-0.5, 1.0, 1.0], [-0.5, 0.0, 0.5]])
    bce = bce_loss(all_s, labels)
    ce = ce_loss(groups)
    tri = triplet_loss(groups, 1.0)
    assert parts["bce"].item() == pytest.approx(bce.item())
    assert parts["ce"].item() == pytest.approx(ce.item())
    assert parts["triplet"].item() == pytest.approx(tri.item())
    assert total.item() == pytest.approx(0.5 * bce.item() + 2 * ce.item() + tri.item(), rel=1e-6)
    # BCE alone (the paper's best) reports nothing else
    _, only = retrieval_loss(pos, neg, LossWeights())
    assert set(only) == {"bce"}


def test_contrastive_loss_formula_and_shared_images():
    t = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    i = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), dim=1)
    logits = 2.0 * t @ i.T
    ls = torch.log_softmax(logits, 1)
    ls_t = torch.log_softmax(logits.T, 1)
    expected = (-(ls[0, 0] + ls[1, 1]) / 2 - (ls_t[0, 0] + ls_t[1, 1]) / 2) / 2
    assert contrastive_loss(t, i, 2.0).item() == pytest.approx(expected.item(), rel=1e-6)
    # captions 0 and 1 describe the same image (key 0): the other copy leaves each row's softmax
    t3 = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]), dim=1)
    i3 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # logits t3 @ i3.T = [[1,1,0],[0,0,1],[.6,.6,.8]]; drop (0,1) and (1,0)
    e = math.exp
    t2i = [
        -math.log(e(1) / (e(1) + e(0))),
        -math.log(e(0) / (e(0) + e(1))),
        -math.log(e(0.8) / (e(0.6) * 2 + e(0.8))),
    ]
    i2t = [
        -math.log(e(1) / (e(1) + e(0.6))),
        -math.log(e(0) / (e(0) + e(0.6))),
        -math.log(e(0.8) / (e(0) + e(1) + e(0.8))),
    ]
    got = contrastive_loss(t3, i3, 1.0, torch.tensor([0, 0, 1]))
    assert got.item() == pytest.approx((sum(t2i) / 3 + sum(i2t) / 3) / 2, rel=1e-6)
