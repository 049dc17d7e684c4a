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
