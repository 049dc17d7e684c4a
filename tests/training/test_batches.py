"""Four-task batches: ITM negatives (never the true image, configurable ratio and directions), conditional masking."""

from __future__ import annotations

import torch

from imagebert.data.masking import IGNORE_INDEX, MaskingConfig
from imagebert.tasks.pretraining import ItmConfig, PretrainTask
from imagebert.training.pairs import InMemoryPairDataset, PairPool

from .conftest import make_corpus, tiny_model_overrides


def _task(tiny_bert, itm: ItmConfig, num_images=6, captions_per_image=5):
    from imagebert.modeling import ImageBertConfig, load_tokenizer

    caps, recs = make_corpus(num_images=num_images, captions_per_image=captions_per_image)
    pool = PairPool([InMemoryPairDataset(caps, recs)])
    cfg = ImageBertConfig.from_bert_checkpoint(tiny_bert, **tiny_model_overrides())
    return PretrainTask(pool, load_tokenizer(tiny_bert), cfg, MaskingConfig(), itm), pool


def test_negatives_never_use_the_true_image_and_follow_the_ratio(tiny_bert):
    # 5 captions per image: a caption drawn at random is often one of the image's own, which must be rejected
    task, pool = _task(tiny_bert, ItmConfig(negative_ratio=0.5, caption_swap_fraction=0.5), num_images=3)
    gen = torch.Generator().manual_seed(0)
    negatives = caption_swaps = total = 0
    for _ in range(300):
        items = [pool[i] for i in torch.randint(len(pool), (8,), generator=gen).tolist()]
        pairs, labels = task.choose_pairs(items, gen)
        for (_, cap, rec), (new_rec, text), label in zip(items, pairs, labels):
            total += 1
            if label == 1:
                assert new_rec is rec and text == cap.text
                continue
            negatives += 1
            if new_rec is rec:  # caption swapped: the caption must belong to another image
                caption_swaps += 1
                owners = {c.image_id for c in pool.datasets[0].captions if c.text == text}
                assert cap.image_id not in owners or len(owners) > 1
                assert text != cap.text
            else:  # image swapped
                assert new_rec.image_id != cap.image_id and text == cap.text
    assert abs(negatives / total - 0.5) < 0.03
    assert abs(caption_swaps / negatives - 0.5) < 0.05


def test_negative_ratio_and_directions_are_configurable(tiny_bert):
    task, pool = _task(tiny_bert, ItmConfig(negative_ratio=0.25, caption_swap_fraction=1.0))
    gen = torch.Generator().manual_seed(1)
    labels_all = []
    for _ in range(200):
        items = [pool[i] for i in range(8)]
        pairs, labels = task.choose_pairs(items, gen)
        labels_all += labels
        for (_, _, rec), (new_rec, _) in zip(items, pairs):
            assert new_rec is rec  # caption_swap_fraction=1: images are never replaced
    assert abs(1 - sum(labels_all) / len(labels_all) - 0.25) < 0.02
    task, pool = _task(tiny_bert, ItmConfig(negative_ratio=0.0))
    _, labels = task.choose_pairs([pool[i] for i in range(8)], gen)
    assert labels == [1] * 8


def test_random_record_is_uniform_over_other_images():
    caps, recs = make_corpus(num_images=4, captions_per_image=1)
    pool = PairPool([InMemoryPairDataset(caps, recs)])
    gen = torch.Generator().manual_seed(0)
    counts: dict[str, int] = {}
    for _ in range(3000):
        rid = pool.random_record((0, "img001"), gen).image_id
        counts[rid] = counts.get(rid, 0) + 1
    assert "img001" not in counts and len(counts) == 3
    assert all(abs(c / 3000 - 1 / 3) < 0.04 for c in counts.values())
    single = PairPool([InMemoryPairDataset(caps[:1], recs[:1])])
    assert (
        single.random_record((0, "img000"), gen) is None and single.random_caption((0, "img000"), gen) is None
    )


def test_build_batch_has_every_model_input(tiny_bert):
    task, pool = _task(tiny_bert, ItmConfig())
    batch = task.build_batch([pool[i] for i in range(6)], torch.Generator().manual_seed(0))
    b, r = batch["region_mask"].shape
    assert batch["mlm_labels"].shape == batch["input_ids"].shape
    assert ((batch["mlm_labels"] != IGNORE_INDEX).sum(1) >= 1).all()
    assert batch["region_masked"].dtype == torch.bool and (batch["region_masked"].sum(1) >= 1).all()
    assert batch["mrfr_targets"].shape == batch["region_features"].shape == (b, r, 16)
    assert batch["itm_labels"].shape == (b,)
    again = task.build_batch([pool[i] for i in range(6)], torch.Generator().manual_seed(0))
    assert all(
        torch.equal(batch[k], again[k]) for k in ("input_ids", "mlm_labels", "itm_labels", "region_masked")
    )


def test_negative_pairs_carry_no_masked_task_loss(tiny_bert):
    from imagebert.modeling import ImageBertForPreTraining

    task, pool = _task(tiny_bert, ItmConfig())
    torch.manual_seed(0)
    model = ImageBertForPreTraining.init_from_bert(tiny_bert, **tiny_model_overrides()).eval()
    batch = task.build_batch([pool[i] for i in range(6)], torch.Generator().manual_seed(0))
    batch["itm_labels"] = torch.tensor([1, 1, 1, 0, 0, 0])
    _, parts = task.compute_loss(model, batch)
    # scrambling everything a negative pair could feed the masked heads must not move their losses
    scrambled = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    scrambled["mlm_labels"][3:] = torch.where(scrambled["mlm_labels"][3:] != IGNORE_INDEX, 5, IGNORE_INDEX)
    scrambled["moc_labels"][3:] = torch.where(scrambled["moc_labels"][3:] != IGNORE_INDEX, 1, IGNORE_INDEX)
    scrambled["mrfr_targets"][3:] += 100.0
    _, parts2 = task.compute_loss(model, scrambled)
    for name in ("mlm", "moc", "mrfr"):
        assert torch.allclose(parts[name], parts2[name]), name
    assert float(parts2["itm"].detach()) > 0  # ITM is computed on all pairs
    # all pairs negative: the masked tasks contribute exactly nothing, ITM still does
    batch["itm_labels"] = torch.zeros(6, dtype=torch.long)
    loss, parts = task.compute_loss(model, batch)
    for name in ("mlm", "moc", "mrfr"):
        assert float(parts[name].detach()) == 0.0
    assert torch.allclose(
        loss, task.tasks.itm_weight * parts["itm"]
    )  # the summed loss weighs ITM (default 4)


def _itc_task(tiny_bert, fraction: float, num_images: int = 6, captions_per_image: int = 5):
    from imagebert.modeling import ImageBertConfig, load_tokenizer
    from imagebert.modeling.tasks import PretrainingTasks

    caps, recs = make_corpus(num_images=num_images, captions_per_image=captions_per_image)
    pool = PairPool([InMemoryPairDataset(caps, recs)])
    cfg = ImageBertConfig.from_bert_checkpoint(tiny_bert, **tiny_model_overrides())
    itm = ItmConfig(itc_negative_fraction=fraction)
    task = PretrainTask(
        pool, load_tokenizer(tiny_bert), cfg, MaskingConfig(), itm, PretrainingTasks(itc=True)
    )
    return task, pool


def test_in_batch_negatives_keep_the_matched_pair_and_mark_the_swap(tiny_bert):
    task, pool = _itc_task(tiny_bert, fraction=1.0)
    gen = torch.Generator().manual_seed(0)
    swapped = both = 0
    for _ in range(100):
        items = [pool[i] for i in torch.randint(len(pool), (8,), generator=gen).tolist()]
        pairs, labels, (swap, groups) = task.choose_negatives(items, gen)
        for k, ((_, cap, rec), (new_rec, text), label) in enumerate(zip(items, pairs, labels)):
            assert new_rec is rec and text == cap.text  # the model does the swapping
            assert (label == 0) == (int(swap[k]) != 0)
            swapped += int(swap[k]) != 0
            both += int(swap[k]) == 2
        same_image = [[a[1].image_id == b[1].image_id for b in items] for a in items]
        assert torch.equal(groups[:, None] == groups[None, :], torch.tensor(same_image))
    assert abs(swapped / 800 - 0.5) < 0.05 and abs(both / swapped - 0.5) < 0.1
    # a batch of one image has nothing to swap with: no in-batch negatives
    one = [pool[0]] * 4
    _, labels, (swap, _) = task.choose_negatives(one, gen)
    assert int(swap.abs().sum()) == 0


def test_in_batch_negatives_need_itc():
    import pytest

    from imagebert.config_utils import ConfigError
    from imagebert.tasks.pretraining import PretrainConfig, StageConfig

    cfg = PretrainConfig(stages=[StageConfig(name="s", steps=1)], itm=ItmConfig(itc_negative_fraction=0.5))
    with pytest.raises(ConfigError, match="tasks.itc"):
        cfg.validate(check_paths=False)
    cfg.tasks.itc = True
    cfg.validate(check_paths=False)
    cfg.itm.itc_negative_fraction = 1.5
    with pytest.raises(ConfigError, match="itc_negative_fraction"):
        cfg.validate(check_paths=False)


def test_model_draws_the_partner_from_another_image_by_similarity(tiny_bert):
    from imagebert.modeling import ImageBertForPreTraining

    torch.manual_seed(0)
    # the image-only ITC pass starts with [CLS]: the tiny vocabulary's id (2), not BERT's 101
    model = ImageBertForPreTraining.init_from_bert(tiny_bert, **tiny_model_overrides(), cls_token_id=2).eval()
    # rows 0,1 show image A, rows 2,3 image B, row 4 image C; caption 3 is by far the closest to image 0
    text = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    image = text.clone()
    image[0] = text[3]
    groups = torch.tensor([0, 0, 1, 1, 2])
    swap = torch.tensor([1, 2, 1, 0, 2])
    with torch.no_grad():
        model.itc_logit_scale.fill_(4.6)  # scale 100: the draw follows the similarity closely
    for _ in range(20):
        partner = model._draw_partners(text, image, swap, groups)
        for i in (0, 1, 2, 4):
            assert groups[partner[i]] != groups[i]
        assert int(partner[0]) == 3
    # the warm-up draws uniformly over the other images' rows
    torch.manual_seed(1)
    drawn = {int(model._draw_partners(text, image, swap, groups, by_similarity=False)[0]) for _ in range(40)}
    assert drawn == {2, 3, 4}
    # the forward puts the partner's caption / image into the swapped rows and ITC sees only matched rows
    task, pool = _itc_task(tiny_bert, fraction=1.0)
    items = [pool[i] for i in (0, 5, 10, 15, 20, 25)]  # six different images
    batch = task.build_batch(items, torch.Generator().manual_seed(3))
    assert int(batch["itm_swap"].ne(0).sum()) > 0
    model.tasks = task.tasks
    loss, parts = task.compute_loss(model, batch)
    assert torch.isfinite(loss) and "itc" in parts and "itm" in parts and "itm_random" in parts
    # the task switches from the uniform draw to the similarity draw at itm.itc_negative_start_step
    seen = []
    real_forward = model.forward
    model.forward = lambda **kw: seen.append(kw["itm_swap_by_similarity"]) or real_forward(**kw)
    task.itm.itc_negative_start_step = 10
    for step in (0, 9, 10):
        task.current_step = step
        task.compute_loss(model, batch)
    assert seen == [False, False, True]
