"""The records every data path speaks: one image's regions, and one caption.

Readers produce these, the store keeps them, extraction writes them, and the collators consume them, so a new
feature format or caption corpus only has to produce one of these two types.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RegionRecord:
    """All regions of one image.

    features: (N, D) float (fp16 in the store, fp32 from most sources).
    boxes: (N, 4) float32 pixel coordinates x1, y1, x2, y2 in the original image.
    image_width, image_height: the original image size in pixels.
    class_ids: (N,) int64 detector class per box (0-based, no background), or None when the source has none;
        -1 marks a box without a class.
    class_confidences: (N,) float32 confidence of `class_ids`, or None.
    class_probs: (N, K) float16/32 full class distribution (no background column), or None.
    """

    image_id: str
    features: np.ndarray
    boxes: np.ndarray
    image_width: int
    image_height: int
    class_ids: np.ndarray | None = None
    class_confidences: np.ndarray | None = None
    class_probs: np.ndarray | None = None

    @property
    def num_boxes(self) -> int:
        return int(self.features.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])


@dataclass(frozen=True)
class Caption:
    """One caption of one image. `caption_id` is unique within a corpus; `split` is e.g. train/val/test/restval."""

    image_id: str
    text: str
    caption_id: str
    split: str = "train"
    source: str = ""
