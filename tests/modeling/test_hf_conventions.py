"""The model by Hugging Face conventions: tied MLM head + resize, Auto classes, hidden states / attentions,
BERT loading through from_pretrained, old checkpoints, fp32 score head, deprecated training switches."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining, BertConfig, BertForPreTraining

from imagebert.data.types import RegionRecord
from imagebert.modeling import (
    ImageBertConfig,
    ImageBertForPreTraining,
    ImageBertForRetrieval,
    ImageBertModel,
    ImageBertProcessor,
    PretrainingTasks,
    contrastive_loss,
    contrastive_loss_from_log_scale,
)

D = 16
TINY = dict(vocab_size=64, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
            max_position_embeddings=64, visual_feature_dim=4, num_object_classes=3, itc_dim=4)  # fmt: skip


def _model(path, cls=ImageBertForPreTraining, **kw):
    torch.manual_seed(0)
    return cls.init_from_bert(path, visual_feature_dim=D, num_object_classes=7, max_regions=12, **kw).eval()


def _batch(processor, n=2, seed=0):
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        x1 = rng.uniform(0, 40, 4)
        boxes = np.stack([x1, x1, x1 + 20, x1 + 30], 1).astype(np.float32)
        feats = rng.normal(size=(4, D)).astype(np.float32)
        recs.append(RegionRecord(str(i), feats, boxes, 100, 80, rng.integers(0, 7, 4)))
    return dict(processor(text=[f"a dog number {i} zzqword" for i in range(n)], regions=recs))


def _keys(folder):
    with safe_open(str(folder / "model.safetensors"), "pt") as fh:
        return set(fh.keys())


def test_resize_token_embeddings_trains_saves_and_reloads(tiny_bert_path, tokenizer, tmp_path):
    import copy

    tok = copy.deepcopy(tokenizer)
    model = _model(tiny_bert_path).train()
    tok.add_tokens(["zzqword"])
    model.resize_token_embeddings(len(tok))
    head = model.cls.predictions
    assert model.get_output_embeddings().weight is model.bert.embeddings.word_embeddings.weight
    assert head.decoder.bias is head.bias and head.bias.shape == (len(tok),)
    batch = _batch(ImageBertProcessor.from_config(model.config, tok))
    new_id = tok.convert_tokens_to_ids("zzqword")
    assert (batch["input_ids"] == new_id).any()
    labels = torch.where(batch["input_ids"] == new_id, batch["input_ids"], -100)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = model(**batch, mlm_labels=labels, itm_labels=torch.ones(2))
    out.loss.backward()
    assert head.bias.grad[new_id] != 0  # the new token's bias is a real, trained parameter
    opt.step()
    model.eval()
    model.save_pretrained(tmp_path / "m")
    back = ImageBertForPreTraining.from_pretrained(tmp_path / "m").eval()
    assert back.config.vocab_size == len(tok)
    with torch.no_grad():
        a = model(**batch, mlm_labels=labels, itm_labels=torch.ones(2))
        b = back(**batch, mlm_labels=labels, itm_labels=torch.ones(2))
    torch.testing.assert_close(a.mlm_loss, b.mlm_loss, rtol=0, atol=0)
    torch.testing.assert_close(
        a.itm_logits, b.itm_logits, rtol=0, atol=1e-6
    )  # reloaded weights: kernels may differ


def test_auto_classes_resolve_imagebert(tiny_bert_path, tmp_path):
    assert isinstance(AutoConfig.for_model("imagebert", max_regions=7), ImageBertConfig)
    model = _model(tiny_bert_path)
    model.save_pretrained(tmp_path / "m")
    assert type(AutoModelForPreTraining.from_pretrained(tmp_path / "m")) is ImageBertForPreTraining
    encoder = AutoModel.from_pretrained(tmp_path / "m")
    assert type(encoder) is ImageBertModel
    torch.testing.assert_close(
        encoder.encoder.layer[1].output.dense.weight, model.bert.encoder.layer[1].output.dense.weight
    )


def test_hidden_states_and_attentions_on_request(tiny_bert_path, tokenizer, tmp_path):
    model = _model(tiny_bert_path, ImageBertForRetrieval)
    batch = _batch(ImageBertProcessor.from_config(model.config, tokenizer))
    plain = model(**batch)
    assert plain.hidden_states is None and plain.attentions is None
    with pytest.raises(ValueError, match="eager"):
        model(**batch, output_attentions=True)  # SDPA does not compute the weights
    model.save_pretrained(tmp_path / "m")
    eager = ImageBertForRetrieval.from_pretrained(tmp_path / "m", attn_implementation="eager").eval()
    out = eager(**batch, output_hidden_states=True, output_attentions=True)
    torch.testing.assert_close(out.scores, plain.scores, atol=1e-5, rtol=0)
    layers = model.config.num_hidden_layers
    assert len(out.hidden_states) == layers + 1 and len(out.attentions) == layers
    seq = 1 + batch["region_features"].shape[1] + batch["input_ids"].shape[1]
    assert out.attentions[0].shape == (2, model.config.num_attention_heads, seq, seq)
    torch.testing.assert_close(
        out.attentions[-1].sum(-1), torch.ones(2, model.config.num_attention_heads, seq)
    )
    enc = eager.bert(**batch, output_hidden_states=True)
    torch.testing.assert_close(enc.hidden_states[-1], enc.last_hidden_state)


def test_bert_for_pretraining_checkpoint_loads_its_mlm_head_by_name(tmp_path, minilm_path):
    torch.manual_seed(1)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    bert = BertForPreTraining(cfg)
    with torch.no_grad():
        bert.cls.predictions.bias.uniform_()
    bert.save_pretrained(tmp_path / "bert")
    model = _model(tmp_path / "bert")
    torch.testing.assert_close(model.cls.predictions.bias, bert.cls.predictions.bias)
    torch.testing.assert_close(
        model.cls.predictions.transform.dense.weight, bert.cls.predictions.transform.dense.weight
    )
    torch.testing.assert_close(
        model.bert.encoder.layer[0].attention.self.key.weight,
        bert.bert.encoder.layer[0].attention.self.key.weight,
    )
    assert (
        "region_feature_proj" in model.newly_initialized_modules
        and "embeddings" not in model.newly_initialized_modules
    )


def test_incomplete_bert_checkpoint_is_refused(tiny_bert_path, tmp_path):
    import shutil

    from safetensors.torch import load_file

    folder = tmp_path / "partial"
    shutil.copytree(tiny_bert_path, folder)
    state = {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if ".layer.1." not in k}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not a complete BERT checkpoint.*layer.1"):
        ImageBertModel.init_from_bert(folder, visual_feature_dim=D)


def test_checkpoint_with_old_key_names_loads_and_resaves_in_the_new_layout(
    tiny_bert_path, tokenizer, tmp_path
):
    model = _model(tiny_bert_path)
    model.bert.set_region_feature_stats(torch.arange(D, dtype=torch.float32), torch.full((D,), 2.0))
    batch = _batch(ImageBertProcessor.from_config(model.config, tokenizer))
    old = {}
    for key, value in model.state_dict().items():
        if key.startswith("cls.predictions.decoder."):
            continue  # tied: never saved
        key = key.replace("bert.", "imagebert.", 1) if key.startswith("bert.") else key
        key = key.replace("cls.predictions.transform.", "mlm_head.").replace(
            "cls.predictions.bias", "mlm_head.bias"
        )
        old[key] = value.contiguous()
    folder = tmp_path / "old"
    folder.mkdir()
    save_file(old, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.update(task_moc=False, loss_weight_itm=2.0, validate_inputs=False)  # the old home of the switches
    (folder / "config.json").write_text(json.dumps(config))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = ImageBertForPreTraining.from_pretrained(folder).eval()
    assert any("old key names" in str(w.message) for w in caught)
    assert loaded.tasks == PretrainingTasks(moc=False, itm_weight=2.0) and loaded.validate_inputs is False
    loaded.tasks = model.tasks
    with torch.no_grad():
        a = model(**batch, mlm_labels=batch["input_ids"], itm_labels=torch.ones(2))
        b = loaded(**batch, mlm_labels=batch["input_ids"], itm_labels=torch.ones(2))
    for name in ("loss", "mlm_loss", "itm_logits"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=1e-6, rtol=0)
    torch.testing.assert_close(loaded.bert.region_feature_mean, torch.arange(D, dtype=torch.float32))
    loaded.save_pretrained(tmp_path / "new")
    keys = _keys(tmp_path / "new")
    assert "cls.predictions.bias" in keys and not any(k.startswith(("imagebert.", "mlm_head.")) for k in keys)
    saved = json.loads((tmp_path / "new" / "config.json").read_text())
    assert not any(k.startswith(("task_", "loss_weight_")) or k == "validate_inputs" for k in saved)
    retrieval = ImageBertForRetrieval.from_pretrained(folder).eval()  # the old layout also loads as a scorer
    scores = retrieval(**batch).scores
    torch.testing.assert_close(scores, a.itm_logits, atol=1e-6, rtol=0)


def test_score_head_is_fp32_under_bf16_autocast(tiny_bert_path, tokenizer):
    model = _model(tiny_bert_path, ImageBertForRetrieval)
    batch = _batch(ImageBertProcessor.from_config(model.config, tokenizer))
    x = torch.randn(3, model.config.hidden_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        head = model.itm_head(x)
        scores = model(**batch).scores
    assert head.dtype == torch.float32 and scores.dtype == torch.float32
    torch.testing.assert_close(head, x @ model.itm_head.weight.t() + model.itm_head.bias, atol=1e-6, rtol=0)


def test_legacy_switch_keys_warn_and_still_apply(tiny_bert_path):
    with pytest.warns(DeprecationWarning, match="tasks.itc"):
        import imagebert.modeling.tasks as tasks_mod

        tasks_mod._warned.discard("task_itc")
        cfg = ImageBertConfig(task_itc=True, **TINY)
    assert ImageBertForPreTraining(cfg).tasks.itc is True
    assert "task_itc" not in cfg.to_dict() and "task_itc" not in cfg.to_json_string()
    with pytest.raises(ValueError, match="itm_weight"):
        PretrainingTasks(itm_weight=-1)


def test_contrastive_loss_old_name_is_a_deprecated_alias():
    torch.manual_seed(0)
    t = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    i = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    scale = torch.tensor(2.0)
    with pytest.warns(DeprecationWarning, match="contrastive_loss_from_log_scale"):
        old = contrastive_loss(t, i, scale)
    new = contrastive_loss_from_log_scale(t, i, scale)
    assert torch.equal(old, new)
    logits = scale.exp() * t @ i.t()
    expected = torch.nn.functional.cross_entropy(logits, torch.arange(4))
    expected = 0.5 * (expected + torch.nn.functional.cross_entropy(logits.t(), torch.arange(4)))
    torch.testing.assert_close(new, expected)


def test_pretrain_config_takes_old_model_switches_as_aliases():
    from imagebert.config_utils import ConfigError
    from imagebert.tasks.pretraining import load_pretrain_config

    sets = ["stages.0.datasets=[x.yaml]"]
    shipped = load_pretrain_config("pretrain/demo_cpu", sets, check_paths=False)
    assert shipped.tasks.itc is True and shipped.validate_inputs is True
    old = ["model.task_itc=false", "model.loss_weight_mlm=2", "model.validate_inputs=false"]
    # the recipe's in-batch ITM negatives are drawn by ITC similarity: without ITC they must be turned off too
    with pytest.raises(ConfigError, match="itc_negative_fraction=0"):
        load_pretrain_config("pretrain/demo_cpu", sets + old, check_paths=False)
    old.append("itm.itc_negative_fraction=0")
    cfg = load_pretrain_config("pretrain/demo_cpu", sets + old, check_paths=False)
    assert cfg.tasks == PretrainingTasks(itc=False, mlm_weight=2.0) and cfg.validate_inputs is False
    assert not any(k.startswith(("task_", "loss_weight_")) or k == "validate_inputs" for k in cfg.model)
