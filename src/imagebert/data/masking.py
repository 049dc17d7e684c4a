"""Masking for the pre-training tasks: MLM on text tokens, MOC + MRFR on regions (paper section 2).

Everything is vectorised over the whole batch (no Python loop over tokens or regions) and every random draw goes
through an explicit `torch.Generator`, so a batch's masks are a pure function of the generator's seed: the trainer
seeds one generator per batch, which makes masking reproducible across restarts, DataLoader workers and ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100


@dataclass
class MaskingConfig:
    """Masking probabilities. Defaults are the paper's (BERT's 15% with 80/10/10; regions 15% with zero 90%)."""

    text_mask_prob: float = 0.15
    text_replace_mask: float = 0.8  # of the chosen tokens: -> [MASK]
    text_replace_random: float = (
        0.1  # of the chosen tokens: -> a random (non-special) token; the rest are kept
    )
    whole_word: bool = (
        False  # choose whole words (a word's WordPiece pieces together) instead of single pieces
    )
    region_mask_prob: float = 0.15
    region_zero_prob: float = 0.9  # of the chosen regions: features zeroed; the rest keep their features
    at_least_one: bool = True  # every caption / image with a maskable item gets at least one masked item

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Probabilities in [0, 1]; ConfigError (a ValueError) naming the key."""
        from imagebert.config_utils import ConfigError

        for name in ("text_mask_prob", "text_replace_mask", "text_replace_random", "region_mask_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"masking.{name} must lie in [0, 1], got {value}")
        if not 0.0 <= self.region_zero_prob <= 1.0:
            raise ConfigError(f"masking.region_zero_prob must lie in [0, 1], got {self.region_zero_prob}")
        if self.text_replace_mask + self.text_replace_random > 1.0 + 1e-9:
            raise ConfigError("masking.text_replace_mask + masking.text_replace_random must not exceed 1")


def _choose(
    candidates: torch.Tensor, prob: float, at_least_one: bool, generator: torch.Generator | None
) -> torch.Tensor:
    """Bernoulli(prob) over `candidates` (Bool [B,N]); rows with a candidate but no pick get one uniform pick."""
    draws = torch.rand(candidates.shape, generator=generator)
    chosen = candidates & (draws < prob)
    if at_least_one:
        empty = candidates.any(dim=1) & ~chosen.any(dim=1)
        # A second independent draw picks the forced position uniformly among the row's candidates.
        scores = torch.rand(candidates.shape, generator=generator).masked_fill(~candidates, -1.0)
        forced = torch.zeros_like(chosen)
        forced.scatter_(1, scores.argmax(dim=1, keepdim=True), True)
        chosen = chosen | (forced & empty.unsqueeze(1) & candidates)
    return chosen


class TextMasker:
    """MLM masking for `[CLS] w.. [SEP] PAD..` id tensors; special tokens and padding are never chosen.

    Build it from a tokenizer (`TextMasker.from_tokenizer`) or from explicit ids for tests.
    """

    def __init__(
        self,
        *,
        mask_token_id: int,
        vocab_size: int,
        special_token_ids: list[int],
        config: MaskingConfig | None = None,
        continuation_ids: list[int] | None = None,
    ) -> None:
        self.config = config or MaskingConfig()
        self.mask_token_id = int(mask_token_id)
        self.vocab_size = int(vocab_size)
        self.special_ids = torch.tensor(sorted(set(int(i) for i in special_token_ids)), dtype=torch.long)
        allowed = torch.ones(self.vocab_size, dtype=torch.bool)
        allowed[self.special_ids[self.special_ids < self.vocab_size]] = False
        self.random_pool = allowed.nonzero().squeeze(1)  # random replacements come from the non-special ids
        self.is_continuation = torch.zeros(self.vocab_size, dtype=torch.bool)
        if continuation_ids:
            self.is_continuation[torch.tensor(continuation_ids, dtype=torch.long)] = True
        if self.config.whole_word and not continuation_ids:
            raise ValueError("whole-word masking needs the tokenizer's continuation ('##') pieces")

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, config: MaskingConfig | None = None) -> TextMasker:
        """Read the [MASK] id, the special ids and (for whole-word masking) the '##' pieces from a tokenizer."""
        vocab = tokenizer.get_vocab()
        size = max(len(tokenizer), max(vocab.values()) + 1)
        continuation = [i for tok, i in vocab.items() if tok.startswith("##")]
        special = list(tokenizer.all_special_ids)
        if tokenizer.pad_token_id is not None:
            special.append(tokenizer.pad_token_id)
        return cls(
            mask_token_id=tokenizer.mask_token_id,
            vocab_size=size,
            special_token_ids=special,
            config=config,
            continuation_ids=continuation,
        )

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (masked input_ids, mlm_labels) with labels = original id at chosen positions, -100 elsewhere."""
        cfg = self.config
        ids = input_ids.to("cpu", torch.long)
        eligible = attention_mask.to("cpu").bool() & ~torch.isin(ids, self.special_ids)
        if cfg.whole_word:
            cont = self.is_continuation[ids.clamp(0, self.vocab_size - 1)] & eligible
            starts = eligible & ~cont
            word_index = torch.cumsum(starts.long(), dim=1)  # word k's pieces all carry k (>= 1)
            chosen_starts = _choose(starts, cfg.text_mask_prob, cfg.at_least_one, generator)
            by_word = torch.zeros((ids.shape[0], ids.shape[1] + 1), dtype=torch.bool)
            by_word.scatter_(1, torch.where(starts, word_index, 0), chosen_starts)
            chosen = by_word.gather(1, word_index) & eligible
            # a piece run with no word start before it (cannot happen after [CLS]) maps to index 0 = never chosen
        else:
            chosen = _choose(eligible, cfg.text_mask_prob, cfg.at_least_one, generator)
        labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
        action = torch.rand(ids.shape, generator=generator)
        to_mask = chosen & (action < cfg.text_replace_mask)
        to_random = (
            chosen
            & (action >= cfg.text_replace_mask)
            & (action < cfg.text_replace_mask + cfg.text_replace_random)
        )
        random_ids = self.random_pool[torch.randint(len(self.random_pool), ids.shape, generator=generator)]
        masked = torch.where(to_mask, torch.full_like(ids, self.mask_token_id), ids)
        masked = torch.where(to_random, random_ids, masked)
        return masked.to(input_ids.device), labels.to(input_ids.device)


@dataclass
class RegionMasks:
    """The region-side outputs of masking, named as the model's forward expects them."""

    region_features: torch.Tensor  # Float [B,R,D], chosen regions zeroed (90%) or kept (10%)
    region_masked: torch.Tensor  # Bool [B,R]
    moc_labels: torch.Tensor  # Long [B,R]: detector class at chosen regions that have one, -100 elsewhere
    mrfr_targets: torch.Tensor  # Float [B,R,D]: the original features


def mask_regions(
    region_features: torch.Tensor,
    region_mask: torch.Tensor,
    region_class_ids: torch.Tensor | None,
    config: MaskingConfig | None = None,
    generator: torch.Generator | None = None,
) -> RegionMasks:
    """Choose regions for MOC/MRFR. A chosen region without a class (-1) still counts for MRFR, not for MOC."""
    cfg = config or MaskingConfig()
    real = region_mask.to("cpu").bool()
    chosen = _choose(real, cfg.region_mask_prob, cfg.at_least_one, generator)
    zero = chosen & (torch.rand(real.shape, generator=generator) < cfg.region_zero_prob)
    device = region_features.device
    targets = region_features.clone()
    features = region_features.masked_fill(zero.to(device).unsqueeze(-1), 0.0)
    if region_class_ids is None:
        moc = torch.full(real.shape, IGNORE_INDEX, dtype=torch.long)
    else:
        cls = region_class_ids.to("cpu", torch.long)
        moc = torch.where(chosen & (cls >= 0), cls, torch.full_like(cls, IGNORE_INDEX))
    return RegionMasks(features, chosen.to(device), moc.to(device), targets)
