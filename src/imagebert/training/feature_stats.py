"""Per-dimension statistics of region features, measured on the training images and installed in the model.

Detector features differ by orders of magnitude between extractors (bottom-up-attention's 2048-d ReLU features
have norms in the tens and a strong component shared by every region; EfficientNet's pooled 1280-d features are
small), and a linear projection initialised for word-embedding scale sees mostly that shared component. Measuring
the mean and std once and standardising inside the model (`ImageBertConfig.region_feature_norm`) makes the
recipe independent of the feature type; see docs/training.md.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


def region_feature_stats(
    datasets: Sequence[Any], max_images: int = 2000, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean and std per feature dimension over the real (non-zero) regions of up to `max_images` images drawn
    evenly from `datasets` (anything with `image_ids` and `record(image_id)`); returns (mean, std, regions)."""
    rng = np.random.default_rng(seed)
    ids = [(d, i) for d, ds in enumerate(datasets) for i in ds.image_ids]
    if not ids:
        raise ValueError("no images to measure region feature statistics on")
    if len(ids) > max_images:
        ids = [ids[k] for k in sorted(rng.choice(len(ids), size=max_images, replace=False))]
    total = sq = None
    count = 0
    for d, image_id in ids:
        feats = np.asarray(datasets[d].record(image_id).features, dtype=np.float64)
        feats = feats[np.any(feats != 0, axis=1)]
        if feats.size == 0:
            continue
        if total is None:
            total, sq = np.zeros(feats.shape[1]), np.zeros(feats.shape[1])
        total += feats.sum(0)
        sq += (feats * feats).sum(0)
        count += feats.shape[0]
    if count < 2:
        raise ValueError(
            f"only {count} non-zero region(s) found in {len(ids)} images: cannot measure statistics"
        )
    mean = total / count
    var = np.maximum(sq / count - mean * mean, 0.0) * count / (count - 1)
    return torch.from_numpy(mean).float(), torch.from_numpy(np.sqrt(var)).float(), count


def install_feature_stats(model: Any, datasets: Sequence[Any], *, force: bool = False) -> bool:
    """Measure and install standardisation statistics on `model` (a model with `.imagebert` or the encoder itself)
    when its config asks for them and none are installed yet; returns whether it measured."""
    encoder = getattr(model, "imagebert", model)
    if encoder.config.region_feature_norm != "standardize":
        return False
    if encoder.region_feature_stats_set and not force:
        return False
    mean, std, regions = region_feature_stats(datasets)
    encoder.set_region_feature_stats(mean, std)
    log.info(
        "region features: standardising with statistics of %d regions (mean of means %.3g, mean std %.3g)",
        regions, float(mean.mean()), float(std.mean()),
    )  # fmt: skip
    return True


AUTO_SIZED = ("visual_feature_dim", "num_object_classes")


def dataset_sizes(datasets: Sequence[Any]) -> dict[str, int | None]:
    """The feature width (from the stores) and the object-class count (max class id + 1 over every record; None
    when no record carries class ids) of `datasets`, for `model.visual_feature_dim/num_object_classes: auto`."""
    from imagebert.training.pairs import dataset_feature_dim

    dims = {dataset_feature_dim(ds) for ds in datasets} - {None}
    if len(dims) > 1:
        raise ValueError(f"the datasets have different feature widths {sorted(dims)}")
    top = -1
    for ds in datasets:
        for image_id in ds.image_ids:
            ids = ds.record(image_id).class_ids
            if ids is not None and len(ids):
                top = max(top, int(np.max(ids)))
    return {
        "visual_feature_dim": dims.pop() if dims else None,
        "num_object_classes": top + 1 if top >= 0 else None,
    }


def resolve_auto_sizes(
    model_overrides: dict[str, Any], datasets: Sequence[Any], where: str
) -> dict[str, Any]:
    """`model` overrides with every `auto` (or absent) size taken from the data; logs what was taken."""
    from imagebert.config_utils import ConfigError

    out = dict(model_overrides)
    wanted = [k for k in AUTO_SIZED if out.get(k, "auto") == "auto"]
    if not wanted:
        return out
    try:
        sizes = dataset_sizes(datasets)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    for key in wanted:
        value = sizes[key]
        if value is None:
            if key == "visual_feature_dim":
                raise ConfigError(
                    f"model.{key}: auto, but {where} has no feature store to read it from; set it"
                )
            value = 1  # no class ids anywhere: MOC has nothing to learn, a 1-way head keeps shapes valid
        out[key] = value
        log.info("model.%s: auto -> %d (from %s)", key, value, where)
    return out
