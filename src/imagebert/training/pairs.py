"""Pair sources for training: several `PairDataset`s seen as one, negatives drawn across all of them.

Anything with the `PairDataset` surface (len, [i] -> (Caption, RegionRecord), captions, image_ids, record,
captions_of) works, including `InMemoryPairDataset` for tests and small in-process corpora.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import torch

from imagebert.data.types import Caption, RegionRecord


class InMemoryPairDataset:
    """The `PairDataset` surface over captions and records held in memory."""

    def __init__(
        self, captions: Sequence[Caption], records: Sequence[RegionRecord] | dict[str, RegionRecord]
    ) -> None:
        self._records = dict(records) if isinstance(records, dict) else {r.image_id: r for r in records}
        self.captions: list[Caption] = [c for c in captions if c.image_id in self._records]
        self.image_ids: list[str] = sorted({c.image_id for c in self.captions})
        self._by_image: dict[str, list[int]] = {}
        for i, c in enumerate(self.captions):
            self._by_image.setdefault(c.image_id, []).append(i)
        dims = {r.feature_dim for r in self._records.values()}
        self.feature_dim = dims.pop() if len(dims) == 1 else None

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> tuple[Caption, RegionRecord]:
        cap = self.captions[index]
        return cap, self._records[cap.image_id]

    def record(self, image_id: str) -> RegionRecord:
        return self._records[image_id]

    def captions_of(self, image_id: str) -> list[int]:
        return list(self._by_image.get(image_id, []))


def dataset_feature_dim(ds: Any) -> int | None:
    store = getattr(ds, "store", None)
    if store is not None and getattr(store, "feature_dim", None) is not None:
        return int(store.feature_dim)
    dim = getattr(ds, "feature_dim", None)
    return None if dim is None else int(dim)


class PairPool:
    """Several pair datasets as one indexable sequence, plus negative sampling that never returns the true image.

    An image is identified by (dataset index, image id), so two corpora that reuse an id do not collide; within a
    dataset, an image with several captions is never paired with one of its own captions as a 'negative'.
    """

    def __init__(self, datasets: Sequence[Any]) -> None:
        if not datasets:
            raise ValueError("no datasets")
        self.datasets = list(datasets)
        self._item_offsets = [0]
        self._image_offsets = [0]
        for ds in self.datasets:
            self._item_offsets.append(self._item_offsets[-1] + len(ds))
            self._image_offsets.append(self._image_offsets[-1] + len(ds.image_ids))

    def __len__(self) -> int:
        return self._item_offsets[-1]

    @property
    def num_images(self) -> int:
        return self._image_offsets[-1]

    def locate(self, index: int) -> tuple[int, int]:
        d = bisect.bisect_right(self._item_offsets, index) - 1
        return d, index - self._item_offsets[d]

    def __getitem__(self, index: int) -> tuple[int, Caption, RegionRecord]:
        d, i = self.locate(index)
        caption, record = self.datasets[d][i]
        return d, caption, record

    def random_caption(
        self, exclude: tuple[int, str], gen: torch.Generator, tries: int = 16
    ) -> Caption | None:
        """A caption of any image other than `exclude`; None when every caption belongs to it."""
        n = len(self)
        for _ in range(tries):
            d, i = self.locate(int(torch.randint(n, (1,), generator=gen)))
            cap = self.datasets[d].captions[i]
            if (d, cap.image_id) != exclude:
                return cap
        start = int(torch.randint(n, (1,), generator=gen))
        for k in range(n):  # rare: almost every caption belongs to `exclude`
            d, i = self.locate((start + k) % n)
            cap = self.datasets[d].captions[i]
            if (d, cap.image_id) != exclude:
                return cap
        return None

    def random_record(self, exclude: tuple[int, str], gen: torch.Generator) -> RegionRecord | None:
        """The regions of a uniformly drawn image other than `exclude`; None when there is no other image."""
        n = self.num_images
        if n < 2:
            return None
        j = int(torch.randint(n - 1, (1,), generator=gen))
        d_ex = exclude[0]
        ids_ex = self.datasets[d_ex].image_ids
        k = bisect.bisect_left(ids_ex, exclude[1])
        if k < len(ids_ex) and ids_ex[k] == exclude[1]:
            flat_ex = self._image_offsets[d_ex] + k
            j = j + 1 if j >= flat_ex else j  # skip the excluded image: uniform over the others
        d = bisect.bisect_right(self._image_offsets, j) - 1
        image_id = self.datasets[d].image_ids[j - self._image_offsets[d]]
        return self.datasets[d].record(image_id)

    def lengths(self, max_regions: int) -> list[int]:
        """Per item: whitespace words + regions (capped), for length bucketing. One count per image, from the
        store's record header where the dataset has a store (`FeatureStore.num_boxes`), else from the record."""
        out: list[int] = []
        for ds in self.datasets:
            store = getattr(ds, "store", None)
            count = (
                store.num_boxes if hasattr(store, "num_boxes") else (lambda i, ds=ds: ds.record(i).num_boxes)
            )
            regions: dict[str, int] = {}
            for cap in ds.captions:
                if cap.image_id not in regions:
                    regions[cap.image_id] = min(count(cap.image_id), max_regions)
                out.append(len(cap.text.split()) + regions[cap.image_id])
        return out
