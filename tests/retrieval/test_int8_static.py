"""Calibrated (static) int8 scoring copies: close to fp32, deterministic, the caller untouched, and refused where
they cannot run.

What can fail: the calibrated copy scoring far from fp32 (bad scales, the padded positions attended to), a rerun
or a second scorer on the same gallery giving other scores (an unseeded calibration sample), the caller's
parameters changing, per-layer outputs returned from a fused stack as if they were real, the settings rule letting
a GPU, bf16 or --compile on through, a missing torchao surfacing as a bare ImportError.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from imagebert.retrieval.scorers import Gallery, ModelPairScorer
from imagebert.runtime.quantize import int8_setting_conflict
from tests.retrieval.conftest import make_records


@pytest.fixture(scope="module")
def gallery_pairs():
    records, captions = make_records(6, seed=3)
    g = Gallery.from_records(records, [(c.image_id, c.text) for c in captions])
    caps, imgs = np.meshgrid(np.arange(g.num_captions), np.arange(g.num_images), indexing="ij")
    return g, caps.ravel(), imgs.ravel()


def test_static_int8_scores_close_to_fp32_the_same_every_time_and_leaves_the_model_alone(
    tiny_model_and_collator, gallery_pairs
):
    model, collator = tiny_model_and_collator
    g, caps, imgs = gallery_pairs
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fp32 = ModelPairScorer(model, collator, g, precision="fp32", batch_size=64).score_pairs(caps, imgs)
    scorer = ModelPairScorer(model, collator, g, weights="int8-static", batch_size=64)
    first = scorer.score_pairs(caps, imgs)
    again = scorer.score_pairs(caps, imgs)

    assert first.shape == fp32.shape == (len(caps),)
    assert not np.array_equal(first, fp32)  # it really ran the int8 stack
    assert np.abs(first - fp32).max() < 0.1 * max(1.0, np.abs(fp32).max())
    assert np.array_equal(first, again)
    # the pairs' order does not change a pair's score beyond float noise (rows are padded to the batch)
    perm = np.random.default_rng(1).permutation(len(caps))
    shuffled = scorer.score_pairs(caps[perm], imgs[perm])
    np.testing.assert_allclose(shuffled, first[perm], atol=1e-4)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(type(layer).__name__ != "CalibratedInt8Layers" for layer in model.bert.encoder.layer), (
        "the caller's encoder was replaced"
    )


def test_a_second_scorer_on_the_same_gallery_calibrates_to_the_same_scores(
    tiny_model_and_collator, gallery_pairs
):
    model, collator = tiny_model_and_collator
    g, caps, imgs = gallery_pairs
    one = ModelPairScorer(model, collator, g, weights="int8-static", batch_size=64).score_pairs(caps, imgs)
    two = ModelPairScorer(model, collator, g, weights="int8-static", batch_size=64).score_pairs(caps, imgs)
    assert np.array_equal(one, two)


def _graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def test_dynamic_shapes_compile_once_for_every_length_and_static_once_per_length(
    tiny_model_and_collator, gallery_pairs
):
    """Batches of four different sequence lengths: after the first length's compile, the default (dynamic) copy
    compiles nothing more, the static one compiles again for each new length; both score alike (the same
    quantised stack, only the compiled kernels differ)."""
    import torch._dynamo

    model, collator = tiny_model_and_collator
    g, _, _ = gallery_pairs
    lengths = collator.encode_text(g.texts)["attention_mask"].sum(1).numpy()
    by_length = [np.flatnonzero(lengths == n) for n in np.unique(lengths)]
    assert len(by_length) >= 3, "the fixture's captions need several token lengths"
    scores = {}
    for shapes in ("dynamic", "static"):
        # sequence multiple 1 for both, so every text length is its own shape
        scorer = ModelPairScorer(model, collator, g, weights="int8-static", batch_size=8, int8_shapes=shapes,
                                 int8_sequence_multiple=1)  # fmt: skip
        torch._dynamo.reset()
        scores[shapes], compiled = [], []
        for rows in by_length:
            before = _graphs_compiled()
            scores[shapes].append(scorer.score_pairs(rows, np.zeros(len(rows), dtype=np.int64)))
            compiled.append(_graphs_compiled() - before)
        assert compiled[0] > 0, "the first call did not compile"
        if shapes == "dynamic":
            assert compiled[1:] == [0] * (len(by_length) - 1), f"dynamic shapes recompiled: {compiled}"
        else:
            assert all(n > 0 for n in compiled), f"static shapes reused a graph across lengths: {compiled}"
    for dyn, stat in zip(scores["dynamic"], scores["static"], strict=True):
        np.testing.assert_allclose(dyn, stat, atol=1e-3)


def test_an_unknown_shapes_mode_is_refused(tiny_model_and_collator, gallery_pairs):
    model, collator = tiny_model_and_collator
    g, _, _ = gallery_pairs
    with pytest.raises(ValueError, match="shapes must be one of"):
        ModelPairScorer(model, collator, g, weights="int8-static", int8_shapes="ragged")


def test_the_fused_copy_refuses_per_layer_outputs(tiny_model_and_collator, gallery_pairs):
    model, collator = tiny_model_and_collator
    g, _, _ = gallery_pairs
    scorer = ModelPairScorer(model, collator, g, weights="int8-static", batch_size=64)
    copy = scorer._scoring_model()
    batch = next(scorer._calibration_batches())
    with pytest.raises(ValueError, match="no per-layer hidden states"):
        copy.bert(**{k: v for k, v in batch.items()}, output_hidden_states=True)


def test_the_settings_rule_covers_int8_static():
    assert int8_setting_conflict(device="auto", precision="auto", weights="int8-static") is None
    assert "--weights int8-static runs on a CPU only" in int8_setting_conflict(
        device="cuda", precision="fp32", weights="int8-static"
    )
    assert "fp32 activations" in int8_setting_conflict(device="cpu", precision="bf16", weights="int8-static")
    assert "--compile on" in int8_setting_conflict(
        device="cpu", precision="fp32", compile="on", weights="int8-static"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "meta"}, "CPU only"),
        ({"precision": "bf16"}, "fp32 activations"),
        ({"compile": "on"}, "do not combine"),
    ],
)
def test_the_scorer_refuses_what_int8_static_cannot_do(
    tiny_model_and_collator, gallery_pairs, kwargs, message
):
    model, collator = tiny_model_and_collator
    g, _, _ = gallery_pairs
    with pytest.raises(ValueError, match=message):
        ModelPairScorer(model, collator, g, weights="int8-static", **kwargs)


def test_a_missing_torchao_names_the_extra(monkeypatch):
    from imagebert.runtime.int8_static import require_static_int8_runtime

    for name in [m for m in sys.modules if m == "torchao" or m.startswith("torchao.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torchao", None)  # what an environment without the package looks like
    with pytest.raises(ValueError, match=r"imagebert\[int8\]"):
        require_static_int8_runtime("cpu")
