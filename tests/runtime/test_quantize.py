"""int8 encoder copies: what is converted, what stays fp32, and what is refused.

What can fail: Linear layers outside the encoder (region projection, heads) being quantised, the caller's model
changing, a model without a BERT encoder being "converted" to nothing, a GPU device being accepted.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from imagebert.runtime.quantize import int8_encoder_copy, int8_linear_count, require_int8_runtime
from tests.retrieval.conftest import tiny_model_config


def test_only_the_encoders_linear_layers_become_int8():
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    from imagebert.modeling import ImageBertForPreTraining

    torch.manual_seed(0)
    cfg = tiny_model_config()
    model = ImageBertForPreTraining(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    converted = int8_encoder_copy(model)

    assert converted is not model and not converted.training
    # Q, K, V, attention output, intermediate, output: six per layer, none elsewhere
    assert int8_linear_count(converted) == 6 * cfg.num_hidden_layers
    assert int8_linear_count(model) == 0
    for name, module in converted.named_modules():
        if isinstance(module, DynamicInt8Linear):
            assert ".encoder.layer." in f".{name}", name
        elif isinstance(module, nn.Linear):
            assert module.weight.dtype == torch.float32, name
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_int8_copy_computes_close_to_the_fp32_encoder():
    from imagebert.modeling import ImageBertForPreTraining

    torch.manual_seed(0)
    model = ImageBertForPreTraining(tiny_model_config()).eval()
    converted = int8_encoder_copy(model)
    hidden = torch.randn(3, 10, model.config.hidden_size)
    mask = torch.ones(3, 1, 1, 10)
    with torch.no_grad():
        ref = model.bert.encoder(hidden, attention_mask=mask).last_hidden_state
        got = converted.bert.encoder(hidden, attention_mask=mask).last_hidden_state
    assert not torch.equal(ref, got)  # it really ran different kernels
    assert (ref - got).abs().max() < 0.1 * ref.std()


def test_a_model_without_a_bert_encoder_is_refused():
    with pytest.raises(ValueError, match="no transformers BertEncoder"):
        int8_encoder_copy(nn.Sequential(nn.Linear(4, 4)))


@pytest.mark.parametrize("device", ["meta", "cuda"])
def test_int8_runs_on_a_cpu_only(device):
    with pytest.raises(ValueError, match="CPU only"):
        require_int8_runtime(device)


def test_the_cli_rule_refuses_any_non_cpu_device_and_accepts_auto():
    from imagebert.runtime.quantize import int8_setting_conflict

    assert int8_setting_conflict(device="auto", precision="auto") is None
    assert int8_setting_conflict(device="cpu", precision="fp32") is None
    for device in ("cuda", "cuda:1", "mps"):
        assert "CPU only" in int8_setting_conflict(device=device, precision="fp32")
    assert "fp32 activations" in int8_setting_conflict(device="cpu", precision="bf16")
    assert "--compile on" in int8_setting_conflict(device="cpu", precision="fp32", compile="on")
