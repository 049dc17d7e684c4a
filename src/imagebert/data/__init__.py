"""Region-feature stores, feature-format readers, caption readers, dataset definitions, collation and masking.

`PairDataset` and the dataset spec import torch, so they load lazily; the store and readers need only numpy/lmdb.
"""

from __future__ import annotations

from imagebert._lazy import lazy_getattr
from imagebert.data.captions import read_caption_list, read_karpathy_json
from imagebert.data.importer import ImportReport, import_features
from imagebert.data.store import BoxSelection, FeatureStore, FeatureStoreWriter
from imagebert.data.types import Caption, RegionRecord

_LAZY = {
    name: "imagebert.data.dataset"
    for name in ("PairDataset", "DatasetSpec", "CaptionSource", "load_dataset_spec")
}

__getattr__ = lazy_getattr("imagebert.data", _LAZY)


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
