"""bf16-resident training weights with fp32 masters (`training.weights: bf16`): the update and the checkpoints stay
fp32, a stopped run resumes exactly, and the setting is refused without bf16 autocast."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from imagebert.config_utils import ConfigError
from imagebert.runtime.precision import MasterWeights
from imagebert.tasks.pretraining import PretrainConfig, StageConfig, run_pretraining
from imagebert.training.pairs import InMemoryPairDataset
from imagebert.training.trainer import TrainerConfig

from .conftest import make_corpus, tiny_model_overrides
from .test_trainer import _Interrupt, _StopAfter


def _config(bert, steps: int = 6, **training) -> PretrainConfig:
    t = dict(batch_size=4, learning_rate=1e-3, log_every=1, checkpoint_every=0, steps=steps, progress_bar=False,
             tensorboard=False, precision="bf16")  # fmt: skip
    t.update(training)
    return PretrainConfig(stages=[StageConfig(name="s1", steps=steps)], init_from_bert=str(bert),
                          model=tiny_model_overrides(), training=TrainerConfig(**t))  # fmt: skip


def _losses(run) -> list[float]:
    lines = (run / "1-s1" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["loss"] for x in lines if "loss" in json.loads(x)]


def test_master_weights_keep_fp32_copies_and_swap_them_in():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    model[1].weight = model[0].weight  # tied: one master
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    master = MasterWeights(model)
    assert len(master.pairs) == 3 and all(p.dtype == torch.bfloat16 for p in model.parameters())
    for (name, want), (_, m) in zip(original.items(), master.pairs, strict=True):
        assert m.dtype == torch.float32 and torch.equal(m, want), name
    with master.full_precision():
        assert all(p.dtype == torch.float32 for p in model.parameters())
        model.load_state_dict(
            {k: v + 1 for k, v in original.items()} | {"1.weight": original["0.weight"] + 1}
        )
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    torch.testing.assert_close(master.pairs[0][1], original["0.weight"] + 1)  # loaded into the master
    torch.testing.assert_close(model[0].weight.float(), original["0.weight"] + 1, atol=2e-2, rtol=1e-2)


def test_bf16_weights_train_like_autocast_and_save_fp32_masters(tiny_bert, tmp_path):
    caps, recs = make_corpus()
    ds = InMemoryPairDataset(caps, recs)
    auto = run_pretraining(_config(tiny_bert), tmp_path / "autocast", dataset_factory=lambda s: [ds])
    resident = run_pretraining(
        _config(tiny_bert, weights="bf16"), tmp_path / "bf16w", dataset_factory=lambda s: [ds]
    )
    a, b = _losses(tmp_path / "autocast"), _losses(tmp_path / "bf16w")
    assert all(torch.isfinite(torch.tensor(b)))
    assert abs(a[0] - b[0]) < 0.02 * a[0]  # same weights and batch at step 1: bf16 rounding only
    # and it trains like autocast at every step (a 6-step loss on 24 pairs is too noisy to show learning by
    # itself: its first-vs-last comparison flipped with the batch order alone)
    assert len(a) == len(b) == 6 and all(abs(x - y) < 0.02 * x for x, y in zip(a, b, strict=True))
    weights = load_file(resident / "model.safetensors")
    assert set(weights) == set(load_file(auto / "model.safetensors"))
    assert all(w.dtype == torch.float32 for w in weights.values())
    # updates accumulated in fp32: the saved matrices are not bf16 values
    assert any(bool((w != w.bfloat16().float()).any()) for w in weights.values() if w.ndim == 2)


def test_bf16_weights_stop_and_resume_equals_the_uninterrupted_run(tiny_bert, tmp_path):
    caps, recs = make_corpus(num_images=10, captions_per_image=2)
    cfg = _config(tiny_bert, steps=6, weights="bf16", checkpoint_every=3)
    ds = InMemoryPairDataset(caps, recs)
    run_pretraining(cfg, tmp_path / "full", dataset_factory=lambda s: [ds])
    killed = _StopAfter(caps, recs, limit=4 * 4 + 2)  # during step 5
    with pytest.raises(_Interrupt):
        run_pretraining(cfg, tmp_path / "part", dataset_factory=lambda s: [killed])
    run_pretraining(cfg, tmp_path / "part", resume=tmp_path / "part", dataset_factory=lambda s: [ds])
    by_step = {}
    for line in (tmp_path / "part" / "1-s1" / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        if "loss" in m:
            by_step[m["step"]] = m["loss"]
    assert [by_step[s] for s in range(1, 7)] == _losses(tmp_path / "full")  # bitwise, step for step


def test_bf16_weights_need_bf16_autocast():
    with pytest.raises(ConfigError, match="bf16 weights need training.precision: bf16"):
        TrainerConfig(steps=1, weights="bf16", precision="fp32").validate()
