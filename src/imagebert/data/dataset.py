"""A dataset definition (YAML) pairs caption sources with a feature store; `PairDataset` serves the pairs.

Relative paths in the YAML resolve against the YAML file's folder, so a dataset folder can be moved as a whole;
`root:` names another folder for them (`root: "@cwd"` = the working directory, what the shipped templates in
configs/datasets/ use). Paths given on the command line (`--set feature_store=...`) resolve against the working
directory (docs/configuration.md).
Captions whose image is not in the store stop construction by default (naming the first ids); with
`missing_images: skip` they are counted and, when `rejects_path` is set, written there as JSONL.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset

from imagebert.config_utils import ConfigError, load_config, resolve_config_path
from imagebert.data.captions import ID_CHOICES, read_caption_list, read_karpathy_json
from imagebert.data.store import BoxSelection, FeatureStore
from imagebert.data.types import Caption, RegionRecord
from imagebert.errors import InputError


@dataclass
class CaptionSource:
    path: str
    format: Literal["karpathy", "caption-list"] = "karpathy"
    # karpathy only: which Karpathy file; `karpathy` = any file in that layout (your own captions)
    dataset: Literal["karpathy", "flickr30k", "flickr8k", "coco"] = "flickr30k"
    image_id: str = "auto"  # karpathy only: auto | stem | cocoid | imgid | filename
    splits: list[str] | None = None  # keep only these splits (None = all)
    split: str = "train"  # caption-list only: the split of rows without a `split` column


@dataclass
class BoxSelectionSpec:
    top_n: int | None = None
    min_confidence: float | None = None
    min_boxes: int = 10
    max_boxes: int = 100


@dataclass
class DatasetSpec:
    feature_store: str
    captions: list[CaptionSource]
    name: str = ""
    missing_images: Literal["error", "skip"] = "error"
    rejects_path: str | None = None
    # A requested split matches these caption splits (Karpathy "train" usually includes "restval").
    split_aliases: dict[str, list[str]] = field(default_factory=lambda: {"train": ["train", "restval"]})
    box_selection: BoxSelectionSpec | None = None  # applied when reading
    # folder the relative paths of this file resolve against: None = the file's folder, "@cwd" = the working
    # directory, else a folder (relative: to the file's folder)
    root: str | None = None
    base_dir: str = ""  # set by load_dataset_spec: the folder relative paths resolve against

    def validate(self) -> None:
        """Called by the loader: what can be checked without reading the data."""
        for i, src in enumerate(self.captions):
            if src.image_id not in ID_CHOICES:
                raise ConfigError(
                    f"captions[{i}].image_id: {src.image_id!r} is not one of {list(ID_CHOICES)}"
                )
        if not self.captions:
            raise ConfigError("captions: name at least one caption source")

    def resolve(self, p: str) -> Path:
        path = Path(p).expanduser()
        if not path.is_absolute() and self.base_dir:
            path = Path(self.base_dir) / path
        return Path(os.path.normpath(path))  # "configs/datasets/../../data" -> "data" in messages


# Keys whose command-line values are paths (made absolute against the working directory before loading).
PATH_KEYS = ("feature_store", "captions.*.path", "rejects_path", "root")
CWD_ROOT = "@cwd"


def load_dataset_spec(path: str | os.PathLike, overrides: list[str] | None = None) -> DatasetSpec:
    """Read a dataset YAML (a file or a shipped name; unknown keys rejected by name); relative paths resolve
    against its folder, or against `root`."""
    path = resolve_config_path(path, "datasets")
    spec = load_config(DatasetSpec, path, overrides)
    if not spec.base_dir:
        folder = Path(path).resolve().parent
        if spec.root is None:
            base = folder
        elif spec.root == CWD_ROOT:
            base = Path.cwd()
        else:
            base = folder / Path(spec.root).expanduser()
        spec.base_dir = os.path.normpath(base)
    return spec


def read_captions(spec: DatasetSpec) -> list[Caption]:
    out: list[Caption] = []
    for src in spec.captions:
        path = spec.resolve(src.path)
        if src.format == "karpathy":
            caps = read_karpathy_json(path, src.dataset, src.image_id)
        else:
            caps = read_caption_list(path, src.split)
        if src.splits is not None:
            keep = set(src.splits)
            caps = [c for c in caps if c.split in keep]
        out.extend(caps)
    return out


class PairDataset(Dataset):
    """(Caption, RegionRecord) pairs of one split. Holds captions and ids in memory, regions stay on disk.

    `split=None` keeps every caption the sources allow; a name matches the captions whose split is that name or
    one of its `split_aliases`.
    """

    def __init__(self, spec: DatasetSpec, split: str | None = "train") -> None:
        self.spec = spec
        sel = spec.box_selection
        self.store = FeatureStore(
            spec.resolve(spec.feature_store), None if sel is None else BoxSelection(**sel.__dict__)
        )
        captions = read_captions(spec)
        if split is not None:
            wanted = set(spec.split_aliases.get(split, [split]))
            captions = [c for c in captions if c.split in wanted]
        present: dict[str, bool] = {}
        kept, missing = [], []
        for c in captions:
            if c.image_id not in present:
                present[c.image_id] = c.image_id in self.store
            (kept if present[c.image_id] else missing).append(c)
        self.num_missing = len(missing)
        self.missing_image_ids = sorted({c.image_id for c in missing})
        if missing and spec.missing_images == "error":
            first = ", ".join(self.missing_image_ids[:10])
            raise InputError(
                f"{len(missing)} captions name {len(self.missing_image_ids)} images that are not in the feature "
                f"store {self.store.path} (first: {first}); import them, or set missing_images: skip",
                path=spec.resolve(spec.captions[0].path) if len(spec.captions) == 1 else None,
                field="image_id",
            )
        if missing and spec.rejects_path:
            rp = spec.resolve(spec.rejects_path)
            rp.parent.mkdir(parents=True, exist_ok=True)
            with open(rp, "w", encoding="utf-8") as f:
                for c in missing:
                    f.write(json.dumps({"reason": "missing_image", "image_id": c.image_id, "caption_id": c.caption_id,
                                        "caption": c.text, "split": c.split, "source": c.source}) + "\n")  # fmt: skip
        self.captions: list[Caption] = kept
        self.image_ids: list[str] = sorted({c.image_id for c in kept})
        self._by_image: dict[str, list[int]] = {}
        for i, c in enumerate(kept):
            self._by_image.setdefault(c.image_id, []).append(i)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> tuple[Caption, RegionRecord]:
        cap = self.captions[index]
        return cap, self.store[cap.image_id]

    def record(self, image_id: str) -> RegionRecord:
        return self.store[image_id]

    def captions_of(self, image_id: str) -> list[int]:
        return list(self._by_image.get(image_id, []))
