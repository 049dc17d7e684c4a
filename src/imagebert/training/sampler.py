"""Deterministic, resumable, rank-sharded batches, optionally grouped by length.

An epoch's batch list is a pure function of (seed, epoch, world size): every rank computes the same global list and
takes every world_size-th batch, so no communication is needed, all ranks run the same number of steps (the
remainder that would not fill one batch per rank is dropped), and a resumed run skips straight to batch k without
touching data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class ShardedBatchSampler:
    """Global batch list per epoch, sharded over ranks.

    lengths: per-item lengths (e.g. regions + words) for length bucketing; None = plain shuffling. Bucketing sorts
    items inside windows of `batch_size * world_size * bucket_multiplier` shuffled items, cuts batches, then
    shuffles the batches, so padding shrinks while every epoch stays random.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        *,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        lengths: Sequence[int] | None = None,
        bucket_multiplier: int = 50,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if lengths is not None and len(lengths) != num_items:
            raise ValueError("lengths must have one entry per item")
        self.num_items = num_items
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.lengths = None if lengths is None else torch.as_tensor(list(lengths), dtype=torch.long)
        self.bucket_multiplier = max(1, bucket_multiplier)

    @property
    def batches_per_rank(self) -> int:
        return self.num_items // (self.batch_size * self.world_size)

    def global_batches(self, epoch: int) -> list[list[int]]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = (
            torch.randperm(self.num_items, generator=gen) if self.shuffle else torch.arange(self.num_items)
        )
        n_batches = self.batches_per_rank * self.world_size
        order = order[: n_batches * self.batch_size]
        if self.lengths is not None:
            window = self.batch_size * self.world_size * self.bucket_multiplier
            chunks = []
            for start in range(0, len(order), window):
                part = order[start : start + window]
                chunks.append(part[torch.argsort(self.lengths[part], stable=True)])
            order = torch.cat(chunks) if chunks else order
        batches = order.view(n_batches, self.batch_size) if n_batches else order.view(0, self.batch_size)
        if self.lengths is not None and self.shuffle and n_batches:
            batches = batches[torch.randperm(n_batches, generator=gen)]
        return batches.tolist()

    def rank_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches for `epoch`: global batches rank, rank + W, rank + 2W, ..."""
        return self.global_batches(epoch)[self.rank :: self.world_size]
