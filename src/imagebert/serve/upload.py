"""Uploaded images -> regions, through the same code as `imagebert extract` (safe loader, letterbox, RoIAlign).

The upload is written under INDEX/uploads/ (never elsewhere), read back with the extraction's safe loader (which
refuses non-images, truncated files and decompression bombs from the header, before decoding), and removed.
Boxes are a grid plus the whole image (the gallery's grid size if it was extracted on a grid, else 4 x 4): an
upload has no box file.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from pathlib import Path

import numpy as np
import torch

from imagebert.data.types import RegionRecord
from imagebert.errors import InputError
from imagebert.extraction.extract import ExtractionConfig, ImageItem, _BoxSource, _features, _prepare
from imagebert.extraction.images import DEFAULT_MAX_PIXELS, ImageRejected, pixel_limit


class UploadRejected(Exception):
    """An upload that cannot be used; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class UploadExtractor:
    def __init__(self, settings: dict, upload_dir: Path, *, device: str = "cpu",
                 max_pixels: int = DEFAULT_MAX_PIXELS, expected_dim: int | None = None) -> None:  # fmt: skip
        from imagebert.extraction.backbone import load_backbone

        self.cfg = ExtractionConfig(backbone=settings["backbone"], image_size=settings["image_size"],
                                    pool_size=settings["pool_size"], sampling_ratio=settings["sampling_ratio"],
                                    weights_path=settings.get("weights_path"), grid=settings.get("grid", 4),
                                    device=device, max_pixels=max_pixels, progress=False)  # fmt: skip
        self.device = torch.device(device)
        self.net = load_backbone(self.cfg.backbone, self.device, self.cfg.weights_path)
        if expected_dim is not None and int(self.net.feature_dim) != expected_dim:
            raise InputError(f"backbone {self.cfg.backbone} gives {self.net.feature_dim}-d features, the model "
                             f"expects {expected_dim}-d")  # fmt: skip
        self.boxes_for = _BoxSource(self.cfg.grid, None)
        self.fill = tuple(self.net.pixel_mean)
        self.upload_dir = upload_dir
        self._lock = threading.Lock()  # one backbone pass at a time: the CPU has few cores to share

    def extract(self, data: bytes) -> RegionRecord:
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        path = self.upload_dir / f"{uuid.uuid4().hex}.upload"
        try:
            with open(path, "xb") as fh:
                fh.write(data)
            item = ImageItem("upload", path, "upload")
            try:
                with pixel_limit(self.cfg.max_pixels):
                    prepared = _prepare(item, self.cfg, self.boxes_for, self.fill)
            except ImageRejected as exc:
                raise UploadRejected(f"the uploaded file is not a usable image: {exc.reason}") from exc
            with self._lock:
                feats = _features(self.net, [prepared], self.cfg, self.device, torch.autocast(
                    device_type=self.device.type, dtype=torch.bfloat16, enabled=False))[0]  # fmt: skip
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        # the gallery's store keeps float16 features: round the upload the same way
        feats = np.asarray(feats, np.float32).astype(np.float16).astype(np.float32)
        return RegionRecord("upload", feats, prepared.boxes, prepared.width, prepared.height)
