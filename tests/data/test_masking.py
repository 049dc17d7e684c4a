"""Masking statistics (over many draws), guarantees (>= 1 per item, specials/padding untouched) and determinism."""

from __future__ import annotations

import pytest
import torch

from imagebert.data.masking import IGNORE_INDEX, MaskingConfig, TextMasker, mask_regions

CLS, SEP, PAD, MASK, UNK = 101, 102, 0, 103, 100
VOCAB = 1000
SPECIAL = [PAD, UNK, CLS, SEP, MASK]


def _masker(**cfg) -> TextMasker:
    return TextMasker(
        mask_token_id=MASK,
        vocab_size=VOCAB,
        special_token_ids=SPECIAL,
        config=MaskingConfig(**cfg),
        continuation_ids=list(range(900, 1000)),  # ids 900.. stand for '##' pieces
    )


def _text_batch(batch: int, words: int, pad: int = 0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    body = torch.randint(200, 900, (batch, words), generator=gen)
    ids = torch.cat(
        [torch.full((batch, 1), CLS), body, torch.full((batch, 1), SEP), torch.full((batch, pad), PAD)], 1
    )
    mask = (ids != PAD).long()
    return ids, mask


def test_text_masking_rates_match_80_10_10():
    ids, mask = _text_batch(400, 40, pad=5)
    masker = _masker()
    gen = torch.Generator().manual_seed(1)
    chosen = kept = to_mask = rnd = eligible = 0
    for _ in range(10):
        out, labels = masker(ids, mask, gen)
        sel = labels != IGNORE_INDEX
        chosen += int(sel.sum())
        eligible += 400 * 40
        to_mask += int((sel & (out == MASK)).sum())
        kept += int((sel & (out == ids)).sum())
        rnd += int((sel & (out != MASK) & (out != ids)).sum())
        assert torch.equal(labels[sel], ids[sel])  # labels are the original ids
        assert torch.equal(out[~sel], ids[~sel])  # nothing else changes
    assert abs(chosen / eligible - 0.15) < 0.005
    assert abs(to_mask / chosen - 0.8) < 0.01
    assert abs(kept / chosen - 0.1) < 0.01  # a random draw equal to the original (p = 1/995) counts as kept
    assert abs(rnd / chosen - 0.1) < 0.01


def test_specials_and_padding_are_never_masked_and_random_ids_are_not_special():
    ids, mask = _text_batch(200, 10, pad=6)
    out, labels = _masker(text_mask_prob=0.9)(ids, mask, torch.Generator().manual_seed(0))
    special = torch.isin(ids, torch.tensor(SPECIAL))
    assert (labels[special] == IGNORE_INDEX).all()
    assert torch.equal(out[special], ids[special])
    replaced = (labels != IGNORE_INDEX) & (out != MASK) & (out != ids)
    assert replaced.any()
    assert not torch.isin(out[replaced], torch.tensor(SPECIAL)).any()


@pytest.mark.parametrize("whole_word", [False, True])
def test_at_least_one_token_per_caption(whole_word):
    # one-word captions with a low rate: almost always forced, never empty
    ids, mask = _text_batch(500, 1, pad=3)
    _, labels = _masker(text_mask_prob=0.01, whole_word=whole_word)(
        ids, mask, torch.Generator().manual_seed(3)
    )
    assert ((labels != IGNORE_INDEX).sum(1) >= 1).all()
    ids, mask = _text_batch(500, 7)
    _, labels = _masker(text_mask_prob=0.0, whole_word=whole_word)(
        ids, mask, torch.Generator().manual_seed(4)
    )
    assert ((labels != IGNORE_INDEX).sum(1) == 1).all()


def test_at_least_one_can_be_switched_off():
    ids, mask = _text_batch(50, 5)
    _, labels = _masker(text_mask_prob=0.0, at_least_one=False)(ids, mask, torch.Generator().manual_seed(0))
    assert (labels == IGNORE_INDEX).all()


def test_whole_word_masks_all_pieces_of_a_word():
    # word = start piece (200..899) followed by 0-2 '##' pieces (900..999)
    gen = torch.Generator().manual_seed(5)
    rows = []
    for _ in range(300):
        row = [CLS]
        for _w in range(8):
            row.append(int(torch.randint(200, 900, (1,), generator=gen)))
            row += [
                int(x)
                for x in torch.randint(
                    900, 1000, (int(torch.randint(0, 3, (1,), generator=gen)),), generator=gen
                )
            ]
        row.append(SEP)
        rows.append(row)
    width = max(map(len, rows))
    ids = torch.tensor([r + [PAD] * (width - len(r)) for r in rows])
    mask = (ids != PAD).long()
    _, labels = _masker(whole_word=True, text_mask_prob=0.3)(ids, mask, torch.Generator().manual_seed(6))
    sel = labels != IGNORE_INDEX
    cont = (ids >= 900) & mask.bool()
    # a continuation piece is chosen exactly when the piece before it is
    prev = torch.cat([torch.zeros(len(rows), 1, dtype=torch.bool), sel[:, :-1]], 1)
    assert torch.equal(sel[cont], prev[cont])
    starts = mask.bool() & (ids >= 200) & (ids < 900)
    assert abs(sel[starts].float().mean().item() - 0.3) < 0.03


def test_text_masking_is_a_function_of_the_generator_seed():
    ids, mask = _text_batch(8, 12)
    m = _masker()
    a = m(ids, mask, torch.Generator().manual_seed(9))
    b = m(ids, mask, torch.Generator().manual_seed(9))
    c = m(ids, mask, torch.Generator().manual_seed(10))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_from_tokenizer_uses_real_ids():
    from imagebert.modeling import load_tokenizer

    tok = load_tokenizer()
    m = TextMasker.from_tokenizer(tok)
    assert m.mask_token_id == tok.mask_token_id == 103
    assert tok.cls_token_id in m.special_ids.tolist() and tok.pad_token_id in m.special_ids.tolist()
    enc = tok(["a man riding a horse on the beach", "dogs"], padding=True, return_tensors="pt")
    out, labels = m(enc["input_ids"], enc["attention_mask"], torch.Generator().manual_seed(0))
    assert ((labels != IGNORE_INDEX).sum(1) >= 1).all()
    assert (out[:, 0] == tok.cls_token_id).all()


def _regions(batch: int, regions: int, dim: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, regions, dim, generator=gen) + 3.0  # no zero rows by chance
    counts = torch.randint(1, regions + 1, (batch,), generator=gen)
    rmask = (torch.arange(regions)[None] < counts[:, None]).long()
    classes = torch.randint(-1, 5, (batch, regions), generator=gen)
    return feats, rmask, classes


def test_region_masking_rates_and_targets():
    feats, rmask, classes = _regions(300, 100)
    gen = torch.Generator().manual_seed(2)
    chosen = zeroed = real = 0
    for _ in range(5):
        out = mask_regions(feats, rmask, classes, MaskingConfig(), gen)
        sel = out.region_masked
        assert not (sel & ~rmask.bool()).any()  # padding never masked
        assert (sel.sum(1) >= 1).all()  # at least one per image
        assert torch.equal(out.mrfr_targets, feats)  # targets are the original features
        z = (out.region_features == 0).all(-1)
        assert not (z & ~sel).any()  # only chosen regions are zeroed
        assert torch.equal(out.region_features[~z], feats[~z])
        chosen += int(sel.sum())
        zeroed += int(z.sum())
        real += int(rmask.sum())
        # MOC: class at chosen regions that have one; -1 (no class) and unchosen -> ignored
        assert torch.equal(out.moc_labels[sel & (classes >= 0)], classes[sel & (classes >= 0)])
        assert (out.moc_labels[~sel | (classes < 0)] == IGNORE_INDEX).all()
    # the forced pick adds a little on images with few regions
    assert 0.15 <= chosen / real < 0.16
    assert abs(zeroed / chosen - 0.9) < 0.015


def test_region_masking_at_least_one_and_without_classes():
    feats, rmask, _ = _regions(400, 3, seed=1)
    out = mask_regions(
        feats, rmask, None, MaskingConfig(region_mask_prob=0.0), torch.Generator().manual_seed(0)
    )
    assert (out.region_masked.sum(1) == 1).all()
    assert (out.moc_labels == IGNORE_INDEX).all()  # no detector classes: MOC has nothing, MRFR still does


def test_masking_config_validation():
    with pytest.raises(ValueError, match="text_mask_prob"):
        MaskingConfig(text_mask_prob=1.5)
    with pytest.raises(ValueError, match="must not exceed 1"):
        MaskingConfig(text_replace_mask=0.8, text_replace_random=0.3)
