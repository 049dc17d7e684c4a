"""Batching: captions to padded token ids, region records to padded tensors, both with masks.

Batches are padded to their longest item (not to the global maximum), so short captions and images with few
boxes cost nothing. Bad records raise InputError naming the image; nothing is silently truncated except text
beyond `max_text_tokens` (the paper's truncation, documented in docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from imagebert.data.types import RegionRecord
from imagebert.errors import InputError


class PairCollator:
    """Builds model inputs from `(RegionRecord, caption text)` pairs (or one modality at a time)."""

    def __init__(
        self,
        tokenizer: Any,
        max_text_tokens: int = 43,
        max_regions: int = 100,
        feature_dim: int = 2048,
        truncate_regions: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.max_text_tokens = max_text_tokens
        self.max_regions = max_regions
        self.feature_dim = feature_dim
        self.truncate_regions = truncate_regions

    def encode_text(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            list(texts),
            padding="longest",
            truncation=True,
            max_length=self.max_text_tokens,
            return_tensors="pt",
            return_token_type_ids=False,
        )
        mask = enc["attention_mask"]
        return {"input_ids": enc["input_ids"], "attention_mask": mask, "text_lengths": mask.sum(1)}

    def encode_regions(self, records: Sequence[RegionRecord]) -> dict[str, Any]:
        counts = []
        for rec in records:
            n = rec.num_boxes
            if rec.features.ndim != 2 or rec.features.shape[1] != self.feature_dim:
                raise InputError(
                    f"feature width {rec.features.shape[-1] if rec.features.ndim else '?'} does not match the "
                    f"model's visual_feature_dim {self.feature_dim}",
                    record=rec.image_id,
                    field="features",
                )
            if rec.boxes.shape != (n, 4):
                raise InputError(
                    f"{n} features but boxes of shape {tuple(rec.boxes.shape)}",
                    record=rec.image_id,
                    field="boxes",
                )
            if n > self.max_regions:
                if not self.truncate_regions:
                    raise InputError(
                        f"{n} regions, more than max_regions={self.max_regions} (select boxes at import, or set "
                        "truncate_regions)",
                        record=rec.image_id,
                        field="features",
                    )
                n = self.max_regions
            if n == 0:
                raise InputError("image has no regions", record=rec.image_id, field="num_boxes")
            counts.append(n)
        batch, longest = len(records), max(counts)
        feats = np.zeros((batch, longest, self.feature_dim), dtype=np.float32)
        boxes = np.zeros((batch, longest, 4), dtype=np.float32)
        sizes = np.ones((batch, 2), dtype=np.float32)
        classes = np.full((batch, longest), -1, dtype=np.int64)
        mask = np.zeros((batch, longest), dtype=np.int64)
        for i, (rec, n) in enumerate(zip(records, counts)):
            feats[i, :n] = rec.features[:n]  # numpy casts (fp16 from the store) to fp32 in the copy
            boxes[i, :n] = rec.boxes[:n]
            sizes[i] = (rec.image_width, rec.image_height)
            if rec.class_ids is not None:
                classes[i, :n] = rec.class_ids[:n]
            mask[i, :n] = 1
        if not np.isfinite(feats).all():  # one pass over the batch; the error names the first bad record
            for i, (rec, n) in enumerate(zip(records, counts)):
                bad = ~np.isfinite(feats[i, :n]).all(1)
                if bad.any():
                    raise InputError(
                        f"NaN/inf in the features of region {int(np.nonzero(bad)[0][0])}",
                        record=rec.image_id,
                        field="features",
                    )
        # Padded boxes are (0,0,0,0): valid, they map to a zero location, and the mask hides them. One batched
        # call validates and converts every box; only when it fails do we go record by record, so that the error
        # names the image (the same message as before vectorising).
        try:
            locations = region_locations(boxes, sizes[:, 0], sizes[:, 1])
        except InputError:
            locations = torch.zeros((batch, longest, 5), dtype=torch.float32)
            for i, rec in enumerate(records):
                n = counts[i]
                locations[i, :n] = region_locations(
                    boxes[i, :n], sizes[i, 0], sizes[i, 1], source=f"image {rec.image_id}"
                )
        return {
            "region_features": torch.from_numpy(feats),
            "region_locations": locations,
            "region_mask": torch.from_numpy(mask),
            "region_class_ids": torch.from_numpy(classes),
            "region_boxes": torch.from_numpy(boxes),
            "region_counts": torch.tensor(counts),
            "image_ids": [rec.image_id for rec in records],
        }

    def __call__(self, pairs: Sequence[tuple[RegionRecord, str]]) -> dict[str, Any]:
        records = [p[0] for p in pairs]
        texts = [p[1] for p in pairs]
        return {**self.encode_regions(records), **self.encode_text(texts)}


MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "region_features", "region_locations", "region_mask")


def model_inputs(batch: dict[str, Any], device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """The subset of a collated batch that `ImageBertModel.forward` takes, moved to `device`."""
    return {
        k: batch[k].to(device) if device is not None else batch[k] for k in MODEL_INPUT_KEYS if k in batch
    }


def region_locations(
    boxes: np.ndarray | torch.Tensor,
    width: float | np.ndarray | torch.Tensor,
    height: float | np.ndarray | torch.Tensor,
    *,
    source: str | None = None,
    tolerance: float = 1.0,
) -> torch.Tensor:
    """The paper's 5-d location (x1/W, y1/H, x2/W, y2/H, box area / image area) for boxes in pixels.

    `boxes` is (N, 4) with one width/height, or (B, R, 4) with per-image (B,) width/height. Boxes must lie in the
    image (within `tolerance` pixels, since detectors round) and have x2 >= x1, y2 >= y1; otherwise an InputError
    names the box. Coordinates are clipped to the image after the check.
    """
    b = torch.as_tensor(boxes, dtype=torch.float32)
    if b.shape[-1] != 4:
        raise InputError(
            f"boxes must have 4 coordinates (x1, y1, x2, y2), got shape {tuple(b.shape)}",
            path=source,
            field="boxes",
        )
    w = torch.as_tensor(width, dtype=torch.float32)
    h = torch.as_tensor(height, dtype=torch.float32)
    if b.dim() == 3:
        w = w.reshape(-1, 1)
        h = h.reshape(-1, 1)
    if bool((w <= 0).any()) or bool((h <= 0).any()):
        raise InputError(
            f"image width/height must be positive, got {w.flatten().tolist()[:4]} x {h.flatten().tolist()[:4]}",
            path=source,
            field="image_w/image_h",
        )
    if not bool(torch.isfinite(b).all()):
        raise InputError(
            f"box {_first_index(~torch.isfinite(b).all(-1))} has NaN/inf coordinates",
            path=source,
            field="boxes",
        )
    x1, y1, x2, y2 = b.unbind(-1)
    bad_order = (x2 < x1) | (y2 < y1)
    if bool(bad_order.any()):
        i = _first_index(bad_order)
        raise InputError(
            f"box {i} has x2 < x1 or y2 < y1: {b.reshape(-1, 4)[_flat(bad_order)].tolist()}",
            path=source,
            field="boxes",
        )
    outside = (x1 < -tolerance) | (y1 < -tolerance) | (x2 > w + tolerance) | (y2 > h + tolerance)
    if bool(outside.any()):
        i = _first_index(outside)
        raise InputError(
            f"box {i} {b.reshape(-1, 4)[_flat(outside)].tolist()} lies outside the image",
            path=source,
            field="boxes",
        )
    x1 = torch.minimum(x1.clamp(min=0), w)
    x2 = torch.minimum(x2.clamp(min=0), w)
    y1 = torch.minimum(y1.clamp(min=0), h)
    y2 = torch.minimum(y2.clamp(min=0), h)
    area = (x2 - x1) * (y2 - y1) / (w * h)
    return torch.stack([x1 / w, y1 / h, x2 / w, y2 / h, area], dim=-1)


def _first_index(mask: torch.Tensor) -> int | tuple[int, ...]:
    idx = mask.nonzero()[0].tolist()
    return idx[0] if len(idx) == 1 else tuple(idx)


def _flat(mask: torch.Tensor) -> int:
    return int(mask.reshape(-1).nonzero()[0])
