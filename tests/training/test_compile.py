"""torch.compile for training: the encoder layers compiled in place, sequences padded to buckets, keys unchanged."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from imagebert.config_utils import ConfigError
from imagebert.modeling import ImageBertForPreTraining
from imagebert.tasks.pretraining import PretrainConfig, StageConfig, run_pretraining
from imagebert.training.pairs import InMemoryPairDataset
from imagebert.training.trainer import TrainerConfig

from .conftest import FEATURE_DIM, make_corpus, tiny_model_overrides


def _config(bert, compile_setting: str, steps: int = 3) -> PretrainConfig:
    training = TrainerConfig(batch_size=4, learning_rate=1e-3, log_every=1, checkpoint_every=0, steps=steps,
                             progress_bar=False, tensorboard=False, compile=compile_setting)  # fmt: skip
    return PretrainConfig(stages=[StageConfig(name="s1", steps=steps)], init_from_bert=str(bert),
                          model=tiny_model_overrides(), training=training)  # fmt: skip


def test_padding_to_a_bucket_leaves_every_output_unchanged(tiny_bert):
    torch.manual_seed(0)
    model = ImageBertForPreTraining.init_from_bert(tiny_bert, **tiny_model_overrides()).eval()
    ids = torch.randint(5, 50, (3, 7))  # the tiny vocabulary has 60 pieces
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0  # a padded caption
    feats, locs = torch.randn(3, 6, FEATURE_DIM), torch.rand(3, 6, 5)
    region_mask = torch.ones(3, 6)
    region_mask[1, 4:] = 0
    args = (ids, mask, feats, locs, region_mask)
    with torch.no_grad():
        plain = model.bert(*args, output_hidden_states=True)
        model.bert.sequence_multiple = 16  # 1 + 6 + 1 + 6 = 14 positions -> 16
        padded = model.bert(*args, output_hidden_states=True)
    assert padded.last_hidden_state.shape == plain.last_hidden_state.shape == (3, 14, 64)
    torch.testing.assert_close(padded.last_hidden_state, plain.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded.pooler_output, plain.pooler_output, atol=1e-5, rtol=1e-5)
    assert torch.equal(padded.attention_mask, plain.attention_mask)
    assert [h.shape for h in padded.hidden_states] == [h.shape for h in plain.hidden_states]


def test_compile_auto_stays_off_on_a_cpu_and_unknown_values_are_refused(tiny_bert, tmp_path):
    caps, recs = make_corpus()
    ds = InMemoryPairDataset(caps, recs)
    final = run_pretraining(
        _config(tiny_bert, "auto", steps=1), tmp_path / "auto", dataset_factory=lambda s: [ds]
    )
    assert json.loads((final / "meta.json").read_text()).get("compiled") is None
    with pytest.raises(ConfigError, match="training.compile must be one of off, on, auto"):
        TrainerConfig(steps=1, compile="fast").validate()


@pytest.mark.slow
def test_compiled_training_runs_and_saves_the_eager_keys(tiny_bert, tmp_path):
    caps, recs = make_corpus()
    ds = InMemoryPairDataset(caps, recs)
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    runs = {}
    for setting in ("off", "on"):
        final = run_pretraining(
            _config(tiny_bert, setting), tmp_path / setting, dataset_factory=lambda s: [ds]
        )
        lines = (tmp_path / setting / "1-s1" / "metrics.jsonl").read_text().splitlines()
        losses = [json.loads(x)["loss"] for x in lines if "loss" in json.loads(x)]
        runs[setting] = (final, losses)
    (eager, eager_losses), (compiled, compiled_losses) = runs["off"], runs["on"]
    assert json.loads((compiled / "meta.json").read_text())["compiled"] == "encoder layers"
    # dynamo really traced the layers: a few graphs (one per bucketed shape, shared by both layers), not per layer
    assert 1 <= counters["stats"]["unique_graphs"] <= 8
    assert len(compiled_losses) == 3 and all(torch.isfinite(torch.tensor(compiled_losses)))
    # dropout draws differ inside compiled graphs, so the losses agree only roughly
    assert abs(compiled_losses[0] - eager_losses[0]) < 0.25 * abs(eager_losses[0])
    keys = set(load_file(eager / "model.safetensors"))
    assert keys == set(load_file(compiled / "model.safetensors"))  # no `_orig_mod.` prefixes
    reloaded = ImageBertForPreTraining.from_pretrained(compiled)
    assert reloaded.bert.sequence_multiple == 0  # a loaded model runs eager until asked
