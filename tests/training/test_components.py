"""Sharded sampling, the LR schedule, weight-decay groups and RNG checkpointing."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from imagebert.training import checkpoint as ckpt
from imagebert.training.optim import build_optimizer, build_scheduler, parameter_groups
from imagebert.training.sampler import ShardedBatchSampler


def test_ranks_get_disjoint_equal_shards_deterministically():
    shards = [ShardedBatchSampler(103, 5, world_size=3, rank=r, seed=7).rank_batches(2) for r in range(3)]
    assert [len(s) for s in shards] == [6, 6, 6]  # 103 // (5*3) = 6 batches each; the remainder is dropped
    seen = [i for s in shards for b in s for i in b]
    assert len(seen) == len(set(seen)) == 90
    again = ShardedBatchSampler(103, 5, world_size=3, rank=1, seed=7).rank_batches(2)
    assert again == shards[1]
    assert ShardedBatchSampler(103, 5, world_size=3, rank=1, seed=7).rank_batches(3) != shards[1]


def test_length_bucketing_reduces_padding():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 140, (2000,), generator=gen).tolist()

    def spread(sampler):
        return np.mean(
            [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in sampler.rank_batches(0)]
        )

    plain = ShardedBatchSampler(2000, 16, seed=1)
    bucketed = ShardedBatchSampler(2000, 16, seed=1, lengths=lengths, bucket_multiplier=20)
    assert spread(bucketed) < 0.2 * spread(plain)
    items = sorted(i for b in bucketed.rank_batches(0) for i in b)
    assert items == list(range(2000))  # still every item once per epoch


def test_bucketing_lengths_come_from_store_headers(tmp_path):
    """PairPool.lengths on a real on-disk dataset: caption words + region count capped at max_regions, the count
    read from each record's header (`FeatureStore.num_boxes`) and equal to what a full read returns."""
    from imagebert.data import FeatureStoreWriter, RegionRecord
    from imagebert.data.dataset import PairDataset, load_dataset_spec
    from imagebert.training.pairs import PairPool
    from tests.data.helpers import write_karpathy

    counts = {"1": 3, "2": 9, "3": 6}
    write_karpathy(
        tmp_path / "dataset_flickr30k.json", "flickr30k", [(f"{i}.jpg", "train", 2) for i in counts]
    )
    with FeatureStoreWriter(tmp_path / "feats") as w:
        for image_id, n in counts.items():
            boxes = np.tile(np.array([0, 0, 5, 5], np.float32), (n, 1))
            w.add(RegionRecord(image_id, np.ones((n, 8), np.float32), boxes, 10, 10))
    (tmp_path / "ds.yaml").write_text("feature_store: feats\ncaptions:\n  - path: dataset_flickr30k.json\n")
    ds = PairDataset(load_dataset_spec(tmp_path / "ds.yaml"), split="train")
    got = PairPool([ds]).lengths(max_regions=7)
    want = [len(c.text.split()) + min(ds.record(c.image_id).num_boxes, 7) for c in ds.captions]
    assert got == want and len(set(got)) == 3


def test_warmup_then_linear_decay():
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, lr=1.0)
    sched = build_scheduler(opt, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[-1] == pytest.approx(0.125) and all(a >= b for a, b in zip(lrs[2:], lrs[3:]))


def test_no_weight_decay_on_bias_and_layernorm():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Embedding(10, 4))
    decay, no_decay = parameter_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = ckpt.capture_rng_state()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    torch.save([state], tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)[0]
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    ckpt.restore_rng_state(loaded)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def test_init_from_an_imagebert_checkpoint(tiny_bert, tmp_path):
    from imagebert.tasks.pretraining import PretrainConfig, StageConfig, run_pretraining
    from imagebert.training.pairs import InMemoryPairDataset
    from imagebert.training.trainer import TrainerConfig

    from .conftest import make_corpus, tiny_model_overrides

    caps, recs = make_corpus()
    ds = InMemoryPairDataset(caps, recs)
    t = TrainerConfig(batch_size=4, steps=1, progress_bar=False, tensorboard=False, checkpoint_every=0)
    cfg = PretrainConfig(stages=[StageConfig(name="a")], init_from_bert=str(tiny_bert), model=tiny_model_overrides(),
                         training=t)  # fmt: skip
    first = run_pretraining(cfg, tmp_path / "a", dataset_factory=lambda s: [ds])
    cfg2 = PretrainConfig(stages=[StageConfig(name="b")], init_from_checkpoint=str(first),
                          model={"task_moc": False, "loss_weight_itm": 2.0}, training=t)  # fmt: skip
    second = run_pretraining(cfg2, tmp_path / "b", dataset_factory=lambda s: [ds])
    import json

    rec = json.loads((tmp_path / "b" / "1-b" / "metrics.jsonl").read_text().splitlines()[0])
    assert "loss_moc" not in rec and rec["loss"] == pytest.approx(
        rec["loss_mlm"] + rec["loss_mrfr"] + 2 * rec["loss_itm"]
    )
    # the switches are training config now: recorded in the run config, not in the model's config.json
    assert "task_moc" not in json.loads((second / "config.json").read_text())
    assert "moc: false" in (second / "run_config.yaml").read_text()
    assert (second / "processor_config.json").is_file()  # every checkpoint carries its ImageBertProcessor
    # an architecture change against a loaded checkpoint is refused by name
    from imagebert.config_utils import ConfigError

    cfg2.model = {"hidden_size": 32}
    with pytest.raises(ConfigError, match="model.hidden_size"):
        run_pretraining(cfg2, tmp_path / "c", dataset_factory=lambda s: [ds])


def test_epochs_count_optimizer_steps_with_accumulation(tiny_bert, tmp_path):
    import json

    from imagebert.tasks.pretraining import PretrainConfig, StageConfig, run_pretraining
    from imagebert.training.pairs import InMemoryPairDataset
    from imagebert.training.trainer import TrainerConfig

    from .conftest import make_corpus, tiny_model_overrides

    caps, recs = make_corpus()  # 24 pairs: 6 batches of 4 per epoch
    t = TrainerConfig(
        batch_size=4, grad_accum_steps=2, progress_bar=False, tensorboard=False, checkpoint_every=0
    )
    cfg = PretrainConfig(stages=[StageConfig(name="e", epochs=2)], init_from_bert=str(tiny_bert),
                         model=tiny_model_overrides(), training=t)  # fmt: skip
    final = run_pretraining(cfg, tmp_path, dataset_factory=lambda s: [InMemoryPairDataset(caps, recs)])
    meta = json.loads((final / "meta.json").read_text())
    assert (meta["step"], meta["total_steps"], meta["epoch"], meta["batch_in_epoch"]) == (6, 6, 2, 0)
