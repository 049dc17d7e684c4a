"""Negative sampling never returns a right answer; mining keeps the highest-scoring wrong candidates."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from imagebert.retrieval.mining import sample_negative_captions, sample_negative_images, select_hard
from imagebert.tasks.retrieval import LossConfig, NegativesConfig, RetrievalTask

from .conftest import make_records


def test_select_hard_by_hand():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.7, 0.8], [0.0, 5.0, 1.0, 1.0, 2.0]])
    wrong = torch.tensor([[False, True, True, True, True], [True, False, True, True, True]])
    # row 0: 0.9 is the right one -> skip; 0.8 (1) and 0.8 (4) tie -> lower index first
    # row 1: 5.0 is right -> skip; then 2.0 (4), then 1.0 tie (2 before 3)
    assert select_hard(scores, wrong, 2).tolist() == [[1, 4], [4, 2]]
    assert select_hard(scores, wrong, 3).tolist() == [[1, 4, 3], [4, 2, 3]]
    with pytest.raises(ValueError, match="fewer than"):
        select_hard(scores, wrong, 5)


def test_sampled_negatives_are_never_right():
    rng = np.random.default_rng(0)
    caption_image = np.repeat(np.arange(4), 5)
    for pos in range(4):
        caps = sample_negative_captions(rng, pos, caption_image, 50)
        assert (caption_image[caps] != pos).all() and len(caps) == 50
        imgs = sample_negative_images(rng, pos, 4, 3)
        assert pos not in imgs and len(set(imgs.tolist())) == 3


class _KnownScorer(torch.nn.Module):
    """score = first feature of the first region + 0.001 * second token id (a fixed, known function)."""

    def forward(self, input_ids, attention_mask, region_features, region_locations, region_mask):
        return SimpleNamespace(scores=region_features[:, 0, 0] + 0.001 * input_ids[:, 1].float())


def test_task_mining_returns_the_highest_scoring_wrong_candidates(tiny_model_and_collator):
    from imagebert.training.pairs import InMemoryPairDataset

    _, collator = tiny_model_and_collator
    records, captions = make_records(20, seed=3)
    ds = InMemoryPairDataset(captions, records)
    task = RetrievalTask(
        ds, collator, NegativesConfig(num_negatives=3, pool_size=10, hard=True), LossConfig()
    )
    batch = task.build_batch([0, 7, 33, 61], torch.Generator().manual_seed(5))
    neg_img, neg_cap = task.mine(_KnownScorer(), batch)
    b, m = 4, 10
    feats = batch["region_features"][:, 0, 0]
    tok = batch["input_ids"][:, 1].float() * 0.001
    for r in range(b):
        # caption r against each pool image: brute force the 3 best wrong ones
        s_img = feats[b:] + tok[r]
        wrong = batch["img_wrong"][r]
        want = [j for j in torch.argsort(-s_img, stable=True).tolist() if wrong[j]][:3]
        assert neg_img[r].tolist() == want
        s_cap = feats[r] + tok[b:]
        wrong_c = batch["cap_wrong"][r]
        want_c = [j for j in torch.argsort(-s_cap, stable=True).tolist() if wrong_c[j]][:3]
        assert neg_cap[r].tolist() == want_c
        assert bool(wrong[neg_img[r]].all()) and bool(wrong_c[neg_cap[r]].all())
    assert batch["img_wrong"].shape == (b, m)


def test_random_negatives_exclude_the_positive_image(tiny_model_and_collator):
    from imagebert.training.pairs import InMemoryPairDataset

    _, collator = tiny_model_and_collator
    records, captions = make_records(8, seed=4)
    ds = InMemoryPairDataset(captions, records)
    task = RetrievalTask(ds, collator, NegativesConfig(num_negatives=4, pool_size=7), LossConfig())
    for seed in range(5):
        items = list(range(0, 40, 3))
        batch = task.build_batch(items, torch.Generator().manual_seed(seed))
        assert batch["img_wrong"].gather(1, batch["neg_img"]).all()
        assert batch["cap_wrong"].gather(1, batch["neg_cap"]).all()


def test_select_hard_with_temperature_samples_only_wrong_candidates_and_prefers_high_scores():
    scores = torch.tensor([[5.0, 4.0, 0.0, -5.0, 3.0]])
    wrong = torch.tensor([[False, True, True, True, True]])
    gen = torch.Generator().manual_seed(0)
    counts = np.zeros(5)
    for _ in range(300):
        pick = select_hard(scores, wrong, 2, temperature=1.0, generator=gen)[0]
        assert len(set(pick.tolist())) == 2 and wrong[0, pick].all()
        counts[pick] += 1
    assert counts[0] == 0 and counts[1] > counts[2] > counts[3]


def test_mining_switches_on_at_the_configured_step(tmp_path, tiny_model_and_collator):
    """Through the real Trainer: random negatives before `hard_start_step`, mined ones from it on."""
    from imagebert.modeling import ImageBertForRetrieval
    from imagebert.training.pairs import InMemoryPairDataset
    from imagebert.training.trainer import Trainer, TrainerConfig

    model, collator = tiny_model_and_collator
    records, captions = make_records(16, seed=2)
    ds = InMemoryPairDataset(captions, records)
    negatives = NegativesConfig(num_negatives=2, pool_size=6, hard=True, hard_start_step=3, hard_source="itc")
    task = RetrievalTask(ds, collator, negatives, LossConfig())
    mined_at: list[int] = []
    original = task.mine

    def spy(core, batch):
        mined_at.append(task.current_step)
        return original(core, batch)

    task.mine = spy
    fresh = ImageBertForRetrieval(model.config)
    cfg = TrainerConfig(batch_size=4, steps=6, log_every=1, checkpoint_every=0, progress_bar=False,
                        tensorboard=False, learning_rate=1e-3)  # fmt: skip

    class Indices(torch.utils.data.Dataset):
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            return i

    Trainer(fresh, task, Indices(), cfg, tmp_path / "run").train()
    assert mined_at == [3, 4, 5]


def test_positive_aware_mining_skips_candidates_scoring_near_the_positive(tiny_model_and_collator):
    """With false_negative_margin, a wrong candidate scoring above (positive - margin) is never mined, and
    hard_fraction keeps the rest of the negatives random but still wrong."""
    from imagebert.training.pairs import InMemoryPairDataset

    _, collator = tiny_model_and_collator
    records, captions = make_records(20, seed=3)
    ds = InMemoryPairDataset(captions, records)
    neg = NegativesConfig(num_negatives=3, pool_size=10, hard=True, false_negative_margin=0.0)
    task = RetrievalTask(ds, collator, neg, LossConfig())
    batch = task.build_batch([0, 7, 33, 61], torch.Generator().manual_seed(5))
    b = 4
    feats = batch["region_features"][:, 0, 0]
    tok = batch["input_ids"][:, 1].float() * 0.001
    neg_img, _ = task.mine(_KnownScorer(), batch)
    for r in range(b):
        positive = float(feats[r] + tok[r])
        s_img = feats[b:] + tok[r]
        wrong = batch["img_wrong"][r]
        eligible = [
            j for j in torch.argsort(-s_img, stable=True).tolist() if wrong[j] and s_img[j] <= positive
        ]
        if len(eligible) >= 3:  # rows with too few eligible fall back to every wrong candidate
            assert neg_img[r].tolist() == eligible[:3]
            assert all(float(s_img[j]) <= positive for j in neg_img[r].tolist())

    mixed = RetrievalTask(ds, collator, NegativesConfig(num_negatives=3, pool_size=10, hard=True,
                                                        hard_fraction=0.34), LossConfig())  # fmt: skip
    neg_img, neg_cap = mixed.mine(_KnownScorer(), batch)
    for r in range(b):
        s_img = feats[b:] + tok[r]
        wrong = batch["img_wrong"][r]
        best = [j for j in torch.argsort(-s_img, stable=True).tolist() if wrong[j]][0]
        assert neg_img[r, 0].item() == best  # one mined (the hardest) ...
        assert len(set(neg_img[r].tolist())) == 3 and bool(
            wrong[neg_img[r]].all()
        )  # ... two random, distinct
        assert bool(batch["cap_wrong"][r][neg_cap[r]].all())


def test_hard_fraction_is_validated():
    from imagebert.config_utils import ConfigError
    from imagebert.tasks.retrieval import FinetuneConfig, validate_config

    cfg = FinetuneConfig()
    cfg.negatives.hard_fraction = 0.0
    with pytest.raises(ConfigError, match="hard_fraction"):
        validate_config(cfg)
