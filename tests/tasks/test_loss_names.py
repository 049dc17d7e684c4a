"""The retrieval contrastive loss takes the exponentiated scale under a name that says so; the old name warns."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from imagebert.retrieval.losses import contrastive_loss


def test_scale_is_the_exponentiated_value_and_logit_scale_is_a_deprecated_alias():
    g = torch.Generator().manual_seed(0)
    t = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    i = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    logits = 10.0 * t @ i.T
    target = torch.arange(4)
    expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    assert contrastive_loss(t, i, scale=10.0).item() == pytest.approx(expected.item(), rel=1e-6)
    assert contrastive_loss(t, i, 10.0).item() == pytest.approx(
        expected.item(), rel=1e-6
    )  # positional still works
    with pytest.warns(DeprecationWarning, match="exponentiated scale"):
        old = contrastive_loss(t, i, logit_scale=10.0)
    assert old.item() == pytest.approx(expected.item(), rel=1e-6)  # same meaning, not exp(10)
    assert contrastive_loss(t, i, scale=math.exp(2.0)).item() != pytest.approx(
        contrastive_loss(t, i, scale=2.0).item()
    )
    with pytest.raises(TypeError, match="scale"):
        contrastive_loss(t, i, scale=1.0, logit_scale=1.0)
    with pytest.raises(TypeError, match="scale"):
        contrastive_loss(t, i)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        contrastive_loss(t, i, scale=torch.tensor(5.0))  # the new name never warns
