"""The attention-kernel setting: what "auto" picks, and that both kernels compute the same function."""

import json

import pytest
import torch

from imagebert.runtime.attention import resolve_attention, set_attention


def test_auto_picks_eager_only_on_a_cpu_in_bf16():
    assert resolve_attention("auto", "cpu", torch.bfloat16) == "eager"
    assert resolve_attention("auto", "cpu", None) == "sdpa"
    assert resolve_attention("auto", "cuda", torch.bfloat16) == "sdpa"
    assert resolve_attention("eager", "cuda", None) == "eager"
    with pytest.raises(ValueError, match="attention must be one of"):
        resolve_attention("flash", "cpu", None)


def _tiny_pretraining_model():
    from imagebert.modeling import ImageBertConfig, ImageBertForPreTraining

    torch.manual_seed(0)
    cfg = ImageBertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=40, visual_feature_dim=12,
                          num_object_classes=5, max_regions=6, max_text_tokens=10)  # fmt: skip
    return ImageBertForPreTraining(cfg).eval()


def test_eager_and_sdpa_give_the_same_outputs_with_padding(tmp_path):
    model = _tiny_pretraining_model()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0  # padded text
    feats, locs = torch.randn(3, 6, 12, generator=g), torch.rand(3, 6, 5, generator=g)
    region_mask = torch.ones(3, 6, dtype=torch.long)
    region_mask[1, 3:] = 0  # padded regions
    inputs = dict(input_ids=ids, attention_mask=mask, region_features=feats, region_locations=locs,
                  region_mask=region_mask, itm_labels=torch.tensor([1, 0, 1]))  # fmt: skip
    with torch.no_grad():
        assert set_attention(model, "sdpa", "cpu", None) == "sdpa"
        ref = model(**inputs)
        assert set_attention(model, "eager", "cpu", None) == "eager"
        assert model.config._attn_implementation == "eager"
        out = model(**inputs)
    torch.testing.assert_close(out.itm_logits, ref.itm_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)
    # a runtime choice: the saved config does not carry it
    model.save_pretrained(tmp_path)
    assert "eager" not in json.dumps(json.loads((tmp_path / "config.json").read_text()))


def test_trainer_config_rejects_an_unknown_attention_kernel():
    from imagebert.config_utils import ConfigError
    from imagebert.training.trainer import TrainerConfig

    with pytest.raises(ConfigError, match="training.attention must be one of"):
        TrainerConfig(steps=1, attention="flash").validate()
