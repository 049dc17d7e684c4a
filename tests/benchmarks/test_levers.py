"""The speed levers as settings: bf16-resident scoring weights, torch.compile's shape buckets, pair sorting.

What can fail: the resident copy mutating the caller's model, its scores drifting beyond bf16 rounding, padding
to buckets changing real rows' scores, the bucket shapes exceeding the model's limits, the compile setting
resolving wrongly for a device.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imagebert.runtime.compile import ShapeBuckets, bucket, resolve_compile
from tests.retrieval.conftest import make_records


@pytest.fixture
def gallery():
    from imagebert.retrieval.scorers import Gallery

    records, captions = make_records(6, seed=3, captions_per_image=2)
    return Gallery.from_records(records, [(c.image_id, c.text) for c in captions])


def _all_pairs(g):
    cap = np.repeat(np.arange(g.num_captions), g.num_images)
    img = np.tile(np.arange(g.num_images), g.num_captions)
    return cap, img


def test_bf16_resident_weights_score_like_autocast_and_leave_the_model_alone(
    tiny_model_and_collator, gallery
):
    from imagebert.retrieval.scorers import ModelPairScorer

    model, collator = tiny_model_and_collator
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cap, img = _all_pairs(gallery)
    fp32 = ModelPairScorer(model, collator, gallery, precision="fp32", batch_size=16).score_pairs(cap, img)
    auto = ModelPairScorer(model, collator, gallery, precision="bf16", batch_size=16).score_pairs(cap, img)
    res_scorer = ModelPairScorer(model, collator, gallery, precision="bf16", weights="bf16", batch_size=16)
    resident = res_scorer.score_pairs(cap, img)
    assert res_scorer._resident is not None and res_scorer._resident is not model
    assert next(res_scorer._resident.bert.encoder.parameters()).dtype == torch.bfloat16
    assert res_scorer._resident.itm_head.weight.dtype == torch.float32  # the score head stays fp32
    for k, v in model.state_dict().items():  # the caller's model is untouched (dtype and values)
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k
    assert np.abs(auto - fp32).max() < 0.05 and np.abs(resident - fp32).max() < 0.05
    assert not np.array_equal(resident, fp32)  # it really ran in bf16
    # fp32 precision ignores weights="bf16" (no copy taken)
    assert ModelPairScorer(model, collator, gallery, precision="fp32", weights="bf16")._resident is None
    with pytest.raises(ValueError, match="weights"):
        ModelPairScorer(model, collator, gallery, weights="int4")


def test_int8_weights_score_close_to_fp32_and_leave_the_model_alone(tiny_model_and_collator, gallery):
    from imagebert.retrieval.scorers import ModelPairScorer
    from imagebert.runtime.quantize import int8_linear_count

    model, collator = tiny_model_and_collator
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cap, img = _all_pairs(gallery)
    fp32 = ModelPairScorer(model, collator, gallery, precision="fp32", batch_size=16).score_pairs(cap, img)
    scorer = ModelPairScorer(model, collator, gallery, precision="auto", weights="int8", batch_size=16)
    int8 = scorer.score_pairs(cap, img)
    assert scorer.dtype is None  # "auto" means fp32 activations for int8 weights, on any CPU
    layers = model.config.num_hidden_layers
    assert int8_linear_count(scorer._resident) == 6 * layers  # q, k, v, attention out, FFN in, FFN out
    assert int8_linear_count(model) == 0
    assert isinstance(scorer._resident.itm_head.weight, torch.Tensor)  # the score head stays an fp32 Linear
    assert scorer._resident.itm_head.weight.dtype == torch.float32
    for k, v in model.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k
    assert not np.array_equal(int8, fp32)  # it really ran the int8 kernels
    spread = float(fp32.std())
    assert np.abs(int8 - fp32).max() < 0.1 * spread, (np.abs(int8 - fp32).max(), spread)
    assert np.corrcoef(int8, fp32)[0, 1] > 0.995


def test_int8_weights_refuse_what_they_cannot_do(tiny_model_and_collator, gallery):
    from imagebert.retrieval.scorers import ModelPairScorer

    model, collator = tiny_model_and_collator
    with pytest.raises(ValueError, match="precision 'bf16'"):
        ModelPairScorer(model, collator, gallery, precision="bf16", weights="int8")
    with pytest.raises(ValueError, match="compile"):
        ModelPairScorer(model, collator, gallery, precision="fp32", weights="int8", compile="on")
    with pytest.raises(ValueError, match="CPU only"):
        ModelPairScorer(model, collator, gallery, device="meta", precision="fp32", weights="int8")


def test_unsorted_pairs_give_the_same_scores(tiny_model_and_collator, gallery):
    from imagebert.retrieval.scorers import ModelPairScorer

    model, collator = tiny_model_and_collator
    cap, img = _all_pairs(gallery)
    a = ModelPairScorer(model, collator, gallery, precision="fp32", batch_size=5).score_pairs(cap, img)
    b = ModelPairScorer(
        model, collator, gallery, precision="fp32", batch_size=5, sort_pairs=False
    ).score_pairs(cap, img)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_bucket_padding_keeps_real_rows_scores(tiny_model_and_collator, gallery):
    model, collator = tiny_model_and_collator
    enc_t = collator.encode_text(gallery.texts[:3])
    regs = collator.encode_regions([gallery.get_record(i) for i in range(3)])
    t_len, r_len = int(enc_t["attention_mask"].sum(1).max()), int(regs["region_mask"].sum(1).max())
    batch = {"input_ids": enc_t["input_ids"][:, :t_len], "attention_mask": enc_t["attention_mask"][:, :t_len],
             "region_features": regs["region_features"][:, :r_len],
             "region_locations": regs["region_locations"][:, :r_len], "region_mask": regs["region_mask"][:, :r_len]}  # fmt: skip
    cfg = model.config
    buckets = ShapeBuckets(batch=8, text_multiple=8, region_multiple=4, max_text=cfg.max_text_tokens,
                           max_regions=cfg.max_regions)  # fmt: skip
    padded = buckets.pad(batch)
    assert (
        padded["input_ids"].shape[0] == 8
        and padded["input_ids"].shape[1] % 8 == 0
        or (padded["input_ids"].shape[1] == cfg.max_text_tokens)
    )
    assert padded["region_features"].shape[1] <= cfg.max_regions
    with torch.no_grad():
        plain = model(**batch).scores
        pad_scores = model(**padded).scores[:3]
    torch.testing.assert_close(pad_scores, plain, atol=1e-5, rtol=1e-5)


def test_bucket_shapes_are_few_and_capped():
    b = ShapeBuckets(batch=128, max_text=43, max_regions=100)
    shapes = {b.shape(n, t, r) for n in (1, 77, 128) for t in range(3, 44) for r in range(1, 101)}
    assert len(shapes) <= 6 * 7  # text buckets x region buckets, whatever the batch
    assert all(s[0] == 128 and s[1] <= 43 and s[2] <= 100 for s in shapes)
    assert bucket(41, 8, 43) == 43 and bucket(17, 8, 43) == 24 and bucket(0, 8) == 0


@pytest.mark.parametrize(("setting", "device", "want"), [
    ("auto", "cpu", False), ("auto", "cuda", True), ("on", "cpu", True), ("off", "cuda", False), (True, "cpu", True),
])  # fmt: skip
def test_compile_setting_resolves_per_device(setting, device, want):
    assert resolve_compile(setting, device) is want


def test_compile_setting_rejects_unknown_values():
    with pytest.raises(ValueError, match="compile"):
        resolve_compile("fast", "cpu")


@pytest.mark.slow
def test_peer_lever_times_every_training_setting_on_the_same_work():
    """The training-lever table at tiny sizes: every row timed in the same rounds, ratios against VisualBERT
    consistent with the times, and the page naming each setting (a row silently dropped fails here)."""
    from benchmarks import bench_levers, speed

    sizes = speed.tiny_sizes(batch=2)
    report = bench_levers.peer_lever(sizes, "bf16", min_reps=2, max_reps=2)
    rows = report["steps"]
    assert list(rows) == [
        "ours",
        "ours_compiled",
        "ours_eager_attention",
        "ours_bf16_weights",
        "ours_bf16_weights_compiled",
        "ours_bf16_weights_eager_attention",
        "visualbert",
    ]
    assert all(r["reps"] == 2 and r["cpu_s"] > 0 for r in rows.values())
    for key, ratio in report["vs_visualbert"].items():
        per_round = [v / o for v, o in zip(rows["visualbert"]["cpu_all"], rows[key]["cpu_all"], strict=True)]
        assert ratio["median"] == pytest.approx(float(np.median(per_round)))
    page = bench_levers.to_markdown({"sizes": vars(sizes), "peer": [report]}, ["--quick"])
    for label in ("`training.weights: bf16` + `training.compile: on`", "`training.attention: eager`",
                  "VisualBERT (HF)"):  # fmt: skip
        assert label in page


def test_size_overrides_change_the_named_fields_and_refuse_typos():
    from benchmarks import speed

    sizes = speed.override_sizes(speed.Sizes(), ["hidden=384", "layers=6"])
    assert (sizes.hidden, sizes.layers, sizes.heads) == (384, 6, speed.Sizes().heads)
    with pytest.raises(SystemExit, match="unknown field 'hiden'"):
        speed.override_sizes(speed.Sizes(), ["hiden=384"])
    with pytest.raises(SystemExit, match="positive integer"):
        speed.override_sizes(speed.Sizes(), ["batch=0"])


def test_a_run_at_other_sizes_gets_its_own_title():
    import dataclasses

    from benchmarks import bench_levers, speed

    default = bench_levers.title(dataclasses.asdict(speed.Sizes()))
    demo = bench_levers.title(dataclasses.asdict(speed.override_sizes(speed.Sizes(), ["hidden=384"])))
    assert default == bench_levers.TITLE
    assert demo != default and demo.endswith("(hidden 384)")
