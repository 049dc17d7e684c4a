"""Region-feature stores, feature-format readers, caption readers, dataset definitions, collation and masking.

`PairDataset` and the dataset spec import torch, so they load lazily; the store and readers need only numpy/lmdb.
"""

from __future__ import annotations

from typing import Any

from imagebert.data.captions import read_caption_list, read_karpathy_json
from imagebert.data.importer import ImportReport, import_features
from imagebert.data.store import BoxSelection, FeatureStore, FeatureStoreWriter
from imagebert.data.types import Caption, RegionRecord

_LAZY = {"PairDataset", "DatasetSpec", "CaptionSource", "load_dataset_spec"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from imagebert.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'imagebert.data' has no attribute {name!r}")


__all__ = [
    "BoxSelection",
    "Caption",
    "CaptionSource",
    "DatasetSpec",
    "FeatureStore",
    "FeatureStoreWriter",
    "ImportReport",
    "PairDataset",
    "RegionRecord",
    "import_features",
    "load_dataset_spec",
    "read_caption_list",
    "read_karpathy_json",
]
