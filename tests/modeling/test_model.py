from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertModel

from imagebert.data.collate import PairCollator
from imagebert.data.types import RegionRecord
from imagebert.errors import InputError
from imagebert.modeling import (
    ImageBertConfig,
    ImageBertForPreTraining,
    ImageBertForRetrieval,
    ImageBertModel,
    PretrainingTasks,
    region_locations,
)

D = 16


def _model(tiny_bert_path, cls=ImageBertModel, **kw):
    torch.manual_seed(0)
    model = cls.init_from_bert(
        tiny_bert_path, visual_feature_dim=D, num_object_classes=7, max_regions=12, **kw
    )
    return model.eval()


def _record(image_id: str, n: int, rng: np.random.Generator) -> RegionRecord:
    x1 = rng.uniform(0, 50, n)
    y1 = rng.uniform(0, 40, n)
    boxes = np.stack([x1, y1, x1 + rng.uniform(1, 50, n), y1 + rng.uniform(1, 40, n)], 1).astype(np.float32)
    return RegionRecord(
        image_id, rng.normal(size=(n, D)).astype(np.float32), boxes, 100, 80, rng.integers(0, 7, n)
    )


def test_sequence_layout_positions_segments_on_hand_made_example(tiny_bert_path, tokenizer):
    model = _model(tiny_bert_path)
    captured = {}
    orig = model.embeddings.forward

    def spy(**kwargs):
        captured.update(kwargs)
        return orig(**kwargs)

    model.embeddings.forward = spy
    ids = tokenizer(["a red circle"], return_tensors="pt").input_ids  # [CLS] a red circle [SEP]
    assert ids.tolist() == [[101, 1037, 2417, 4418, 102]]
    feats = torch.randn(1, 3, D)
    locs = torch.rand(1, 3, 5)
    out = model(ids, torch.ones_like(ids), feats, locs, torch.ones(1, 3))
    # [CLS] r r r [SEP] a red circle [SEP]
    assert captured["position_ids"].tolist() == [[0, 1, 1, 1, 2, 3, 4, 5, 6]]
    assert captured["token_type_ids"].tolist() == [[0, 0, 0, 0, 0, 1, 1, 1, 1]]
    word = model.embeddings.word_embeddings
    emb = captured["inputs_embeds"][0]
    torch.testing.assert_close(emb[0], word.weight[101])
    torch.testing.assert_close(emb[4], word.weight[102])  # the [SEP] closing the image
    torch.testing.assert_close(emb[5:], word.weight[ids[0, 1:]])
    # no statistics installed: standardisation is the identity; each projection has its own LayerNorm
    expected_region = model.region_feature_norm(
        model.region_feature_proj(feats[0])
    ) + model.region_location_norm(model.region_location_proj(locs[0]))
    torch.testing.assert_close(emb[1:4], expected_region)
    assert out.last_hidden_state.shape == (1, 9, 32)
    assert out.text_hidden_states.shape == (1, 5, 32) and out.region_hidden_states.shape == (1, 3, 32)


def test_location_vector_matches_spec():
    loc = region_locations(np.array([[10, 20, 60, 100]], np.float32), 200, 400)
    expected = [10 / 200, 20 / 400, 60 / 200, 100 / 400, (50 * 80) / (200 * 400)]
    torch.testing.assert_close(loc[0], torch.tensor(expected))


def test_padding_regions_and_words_changes_no_real_output(tiny_bert_path, tokenizer):
    model = _model(tiny_bert_path)
    rng = np.random.default_rng(0)
    collator = PairCollator(tokenizer, feature_dim=D, max_regions=12)
    short = (_record("a", 3, rng), "a cat")
    long = (_record("b", 10, rng), "two green stars above a yellow triangle near the door")
    alone = collator([short])
    padded = collator([short, long])
    keys = ("input_ids", "attention_mask", "region_features", "region_locations", "region_mask")
    with torch.no_grad():
        a = model(**{k: alone[k] for k in keys})
        b = model(**{k: padded[k] for k in keys})
    t = alone["input_ids"].shape[1]
    torch.testing.assert_close(b.text_hidden_states[0, :t], a.text_hidden_states[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(b.region_hidden_states[0, :3], a.region_hidden_states[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(b.pooler_output[0], a.pooler_output[0], atol=1e-5, rtol=0)


def test_text_only_pass_matches_transformers_bert_with_real_minilm(minilm_path, tokenizer):
    ours = ImageBertModel.init_from_bert(minilm_path).eval()
    peer = BertModel.from_pretrained(str(minilm_path), attn_implementation="sdpa").eval()
    enc = tokenizer(["a man riding a horse on the beach", "dogs"], padding=True, return_tensors="pt")
    ids, mask = enc.input_ids, enc.attention_mask
    positions = torch.cat(
        [torch.zeros(2, 1, dtype=torch.long), torch.arange(3, ids.shape[1] + 2).expand(2, -1)], 1
    )
    segments = torch.ones_like(ids)
    segments[:, 0] = 0
    with torch.no_grad():
        a = ours(input_ids=ids, attention_mask=mask).text_hidden_states
        b = peer(
            input_ids=ids, attention_mask=mask, position_ids=positions, token_type_ids=segments
        ).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=0)
    assert ours.config.hidden_size == 384 and ours.config.num_hidden_layers == 6


def test_real_wordpiece_ids(tokenizer):
    ids = tokenizer("A man playing guitar.", add_special_tokens=True).input_ids
    assert ids == [101, 1037, 2158, 2652, 2858, 1012, 102]
    assert tokenizer.convert_ids_to_tokens(ids[1:-1]) == ["a", "man", "playing", "guitar", "."]
    assert tokenizer.vocab_size == 30522


def _pretraining_batch(tokenizer, n=4, regions=5, seed=0):
    rng = np.random.default_rng(seed)
    collator = PairCollator(tokenizer, feature_dim=D, max_regions=12)
    pairs = [(_record(str(i), regions, rng), f"caption number {i} with a dog") for i in range(n)]
    batch = collator(pairs)
    ids = batch["input_ids"]
    mlm_labels = torch.full_like(ids, -100)
    mlm_labels[:, 2] = ids[:, 2]
    ids = ids.clone()
    ids[:, 2] = tokenizer.mask_token_id
    region_masked = torch.zeros(n, regions, dtype=torch.bool)
    region_masked[:, 1] = True
    targets = batch["region_features"].clone()
    feats = targets.clone()
    feats[region_masked] = 0
    return {
        "input_ids": ids,
        "attention_mask": batch["attention_mask"],
        "region_features": feats,
        "region_locations": batch["region_locations"],
        "region_mask": batch["region_mask"],
        "mlm_labels": mlm_labels,
        "region_masked": region_masked,
        "moc_labels": batch["region_class_ids"],
        "mrfr_targets": targets,
    }


def test_every_head_gets_gradients_and_losses_are_finite(tiny_bert_path, tokenizer):
    model = _model(tiny_bert_path, ImageBertForPreTraining).train()
    model.tasks = PretrainingTasks(itc=True)
    batch = _pretraining_batch(tokenizer)
    out = model(**batch, itm_labels=torch.tensor([1, 1, 0, 1]))
    for name in ("mlm_loss", "moc_loss", "mrfr_loss", "itm_loss", "itc_loss", "loss"):
        value = getattr(out, name)
        assert value is not None and torch.isfinite(value), name
    heads = {
        "mlm": (out.mlm_loss, model.cls.predictions.transform.dense.weight),
        "moc": (out.moc_loss, model.region_heads.moc.weight),
        "mrfr": (out.mrfr_loss, model.region_heads.mrfr.weight),
        "itm": (out.itm_loss, model.itm_head.weight),
        "itc": (out.itc_loss, model.itc_text_proj.weight),
    }
    for name, (loss, weight) in heads.items():
        (grad,) = torch.autograd.grad(loss, weight, retain_graph=True)
        assert grad.abs().sum() > 0, name
    # the MLM decoder is the word-embedding matrix itself
    (grad,) = torch.autograd.grad(
        out.mlm_loss, model.bert.embeddings.word_embeddings.weight, retain_graph=True
    )
    assert grad.abs().sum() > 0


def test_negative_pairs_produce_no_masked_task_loss(tiny_bert_path, tokenizer):
    model = _model(tiny_bert_path, ImageBertForPreTraining)
    batch = _pretraining_batch(tokenizer)
    out_neg = model(**batch, itm_labels=torch.zeros(4))
    assert out_neg.mlm_loss.item() == 0 and out_neg.moc_loss.item() == 0 and out_neg.mrfr_loss.item() == 0
    assert out_neg.itm_loss.item() > 0
    # a batch with one positive gives the same masked-task losses as that positive alone
    mixed = model(**batch, itm_labels=torch.tensor([0, 1, 0, 0]))
    single = model(**{k: v[1:2] for k, v in batch.items()}, itm_labels=torch.tensor([1]))
    torch.testing.assert_close(mixed.mlm_loss, single.mlm_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed.mrfr_loss, single.mrfr_loss, atol=1e-5, rtol=1e-5)


def test_tasks_can_be_switched_off_and_weighted(tiny_bert_path, tokenizer):
    batch = _pretraining_batch(tokenizer)
    model = _model(tiny_bert_path, ImageBertForPreTraining)
    model.tasks = PretrainingTasks(moc=False, mlm_weight=2.0)
    out = model(**batch, itm_labels=torch.ones(4))
    assert out.moc_loss is None
    torch.testing.assert_close(
        out.loss, 2 * out.mlm_loss + out.mrfr_loss + 4.0 * out.itm_loss
    )  # ITM: 4 by default


def test_save_and_load_round_trip_is_identical(tiny_bert_path, tokenizer, tmp_path):
    model = _model(tiny_bert_path, ImageBertForPreTraining)
    batch = _pretraining_batch(tokenizer)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = ImageBertForPreTraining.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        a = model(**batch, itm_labels=torch.ones(4))
        b = loaded(**batch, itm_labels=torch.ones(4))
    for name in ("loss", "mlm_loss", "moc_loss", "mrfr_loss", "itm_logits"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=0, rtol=0)
    # the pre-training ITM head becomes the retrieval scorer (zero-shot)
    retrieval = ImageBertForRetrieval.from_pretrained(tmp_path).eval()
    keys = ("input_ids", "attention_mask", "region_features", "region_locations", "region_mask")
    with torch.no_grad():
        scores = retrieval(**{k: batch[k] for k in keys}).scores
    torch.testing.assert_close(scores, a.itm_logits, atol=1e-6, rtol=0)


def test_new_layers_use_bert_init_and_text_side_comes_from_checkpoint(minilm_path):
    from safetensors.torch import load_file

    model = ImageBertForPreTraining.init_from_bert(minilm_path, visual_feature_dim=D)
    state = load_file(str(minilm_path / "model.safetensors"))
    key = next(k for k in state if k.endswith("encoder.layer.3.attention.self.query.weight"))
    torch.testing.assert_close(model.bert.encoder.layer[3].attention.self.query.weight, state[key])
    std = model.region_heads.moc.weight.std().item()
    assert 0.015 < std < 0.025  # N(0, 0.02)
    assert model.region_heads.moc.bias.abs().sum() == 0


@pytest.mark.parametrize(
    "change, match",
    [
        ("width", "visual_feature_dim"),
        ("nan", "NaN"),
        ("too_many", "max_regions"),
    ],
)
def test_bad_model_inputs_raise_clear_errors(tiny_bert_path, change, match):
    model = _model(tiny_bert_path)
    ids = torch.tensor([[101, 1037, 102]])
    feats, locs = torch.randn(1, 3, D), torch.rand(1, 3, 5)
    if change == "width":
        feats = torch.randn(1, 3, D + 1)
    elif change == "nan":
        feats[0, 2, 5] = float("nan")
    elif change == "too_many":
        feats, locs = torch.randn(1, 13, D), torch.rand(1, 13, 5)
    with pytest.raises(ValueError, match=match):
        model(ids, None, feats, locs)


def test_bad_boxes_raise_naming_the_box():
    with pytest.raises(InputError, match="x2 < x1"):
        region_locations(np.array([[0, 0, 10, 10], [30, 5, 20, 9]], np.float32), 100, 100, source="img7")
    with pytest.raises(InputError, match="outside the image") as err:
        region_locations(np.array([[0, 0, 10, 10], [0, 0, 150, 10]], np.float32), 100, 100, source="img7")
    assert "img7" in str(err.value) and "box 1" in str(err.value)


def test_collator_rejects_bad_records(tokenizer):
    collator = PairCollator(tokenizer, feature_dim=D, max_regions=4)
    rng = np.random.default_rng(1)
    wide = RegionRecord("w", np.zeros((2, D + 3), np.float32), np.zeros((2, 4), np.float32), 10, 10)
    with pytest.raises(InputError, match="feature width") as err:
        collator([(wide, "x")])
    assert "w" in str(err.value) and "features" in str(err.value)
    with pytest.raises(InputError, match="max_regions"):
        collator([(_record("m", 5, rng), "x")])
    nan = _record("n", 2, rng)
    nan.features[1, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        collator([(nan, "x")])


def test_unknown_config_key_is_rejected():
    with pytest.raises(ValueError, match="unknown config key.*'visual_feat_dim'"):
        ImageBertConfig(visual_feat_dim=3)
    with pytest.raises(ValueError, match="mrfr_reduction"):
        ImageBertConfig(mrfr_reduction="median")


def test_standardisation_makes_the_encoder_blind_to_feature_scale_and_offset(tiny_bert_path):
    """Features a*f + b with statistics measured on them reach the encoder exactly as f with f's statistics; a
    masked (all-zero) row stays zero; the statistics travel with save/load."""
    model = _model(tiny_bert_path)
    rng = np.random.default_rng(0)
    raw = torch.from_numpy(rng.random((2, 5, D)).astype(np.float32))
    scale, offset = torch.linspace(5, 50, D), torch.linspace(10, 100, D)
    big = raw * scale + offset
    mean, std = raw.reshape(-1, D).mean(0), raw.reshape(-1, D).std(0)
    model.set_region_feature_stats(mean, std)
    a = model.normalize_region_features(raw)
    model.set_region_feature_stats(mean * scale + offset, std * scale)
    b = model.normalize_region_features(big)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    big[0, 2] = 0.0
    assert torch.equal(model.normalize_region_features(big)[0, 2], torch.zeros(D))
    with pytest.raises(ValueError, match="NaN"):
        model.set_region_feature_stats(torch.full((D,), float("nan")), std)


def test_feature_statistics_round_trip(tiny_bert_path, tmp_path):
    model = _model(tiny_bert_path, cls=ImageBertForPreTraining)
    assert not model.bert.region_feature_stats_set
    model.bert.set_region_feature_stats(torch.arange(D, dtype=torch.float32), torch.full((D,), 2.0))
    model.save_pretrained(tmp_path / "m")
    back = ImageBertForRetrieval.from_pretrained(tmp_path / "m").bert
    assert back.region_feature_stats_set
    torch.testing.assert_close(back.region_feature_mean, torch.arange(D, dtype=torch.float32))
