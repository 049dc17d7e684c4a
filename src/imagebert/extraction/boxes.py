"""Where region boxes come from: a COCO-style box file, a regular grid, or a detector plug-in.

All boxes are float32 `[N, 4]` x1, y1, x2, y2 in pixels of the image *after* EXIF orientation is applied (what a
viewer shows, and what COCO-style tools annotate).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from imagebert.config_utils import ConfigError
from imagebert.errors import InputError

__all__ = [
    "BoxFile",
    "Detections",
    "Detector",
    "ImageBoxes",
    "TorchvisionFasterRCNNDetector",
    "clip_boxes",
    "grid_boxes",
    "load_box_file",
    "load_detector",
]


@dataclass
class ImageBoxes:
    """The annotated boxes of one image in a box file."""

    file_name: str
    coco_id: Any
    width: int
    height: int
    boxes: np.ndarray  # [N, 4] float32 x1 y1 x2 y2
    class_ids: np.ndarray  # [N] int64, 0..K-1


@dataclass
class BoxFile:
    """A parsed COCO-style annotation file. `categories[i]` is (original category id, name) of class index i."""

    path: Path
    images: dict[str, ImageBoxes]  # keyed by normalised file_name
    categories: list[tuple[Any, str]] = field(default_factory=list)

    def category_mapping(self) -> dict[str, Any]:
        """The JSON saved next to the store: class index -> original id and name."""
        return {
            "source": str(self.path),
            "num_classes": len(self.categories),
            "classes": [
                {"index": i, "category_id": cid, "name": name}
                for i, (cid, name) in enumerate(self.categories)
            ],
        }


def _norm_name(name: str) -> str:
    return os.path.normpath(name).replace("\\", "/")


def _number(value: Any, path: Path, record: str, fld: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"expected a finite number, got {value!r}", path=path, record=record, field=fld)
    return float(value)


def load_box_file(path: str | os.PathLike) -> BoxFile:
    """Read a COCO-style JSON (images[], annotations[], categories[]); category ids map to 0..K-1 in file order.

    Every malformed record raises `InputError` naming the file, the record and the field; boxes are clipped to
    the declared image size; a box with no area after clipping is an error (it cannot be pooled).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError("box file not found", path=path) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"not valid JSON: {exc}", path=path) from exc
    if not isinstance(data, dict):
        raise InputError("expected a JSON object with images, annotations, categories", path=path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise InputError("missing or not a list", path=path, field=key)

    categories: list[tuple[Any, str]] = []
    cat_index: dict[Any, int] = {}
    for i, cat in enumerate(data["categories"]):
        rec = f"categories[{i}]"
        if not isinstance(cat, dict) or "id" not in cat:
            raise InputError("category needs an id", path=path, record=rec, field="id")
        if cat["id"] in cat_index:
            raise InputError(f"duplicate category id {cat['id']!r}", path=path, record=rec, field="id")
        cat_index[cat["id"]] = len(categories)
        categories.append((cat["id"], str(cat.get("name", cat["id"]))))

    images: dict[str, ImageBoxes] = {}
    by_id: dict[Any, ImageBoxes] = {}
    for i, img in enumerate(data["images"]):
        rec = f"images[{i}]"
        if not isinstance(img, dict):
            raise InputError("image entry must be an object", path=path, record=rec)
        for key in ("id", "file_name", "width", "height"):
            if key not in img:
                raise InputError("missing", path=path, record=rec, field=key)
        if not isinstance(img["file_name"], str) or not img["file_name"]:
            raise InputError("must be a non-empty string", path=path, record=rec, field="file_name")
        w = _number(img["width"], path, rec, "width")
        h = _number(img["height"], path, rec, "height")
        if w < 1 or h < 1 or w != int(w) or h != int(h):
            raise InputError(f"invalid image size {w}x{h}", path=path, record=rec, field="width")
        name = _norm_name(img["file_name"])
        if name in images:
            raise InputError(f"duplicate file_name {name!r}", path=path, record=rec, field="file_name")
        if img["id"] in by_id:
            raise InputError(f"duplicate image id {img['id']!r}", path=path, record=rec, field="id")
        entry = ImageBoxes(
            name, img["id"], int(w), int(h), np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
        )
        images[name] = entry
        by_id[img["id"]] = entry

    boxes: dict[Any, list[list[float]]] = {k: [] for k in by_id}
    classes: dict[Any, list[int]] = {k: [] for k in by_id}
    for i, ann in enumerate(data["annotations"]):
        rec = f"annotations[{i}]"
        if not isinstance(ann, dict):
            raise InputError("annotation must be an object", path=path, record=rec)
        if ann.get("image_id") not in by_id:
            raise InputError(
                f"unknown image_id {ann.get('image_id')!r}", path=path, record=rec, field="image_id"
            )
        if ann.get("category_id") not in cat_index:
            raise InputError(
                f"unknown category_id {ann.get('category_id')!r}", path=path, record=rec, field="category_id"
            )
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise InputError("bbox must be [x, y, w, h]", path=path, record=rec, field="bbox")
        x, y, bw, bh = (_number(v, path, rec, "bbox") for v in bbox)
        if bw <= 0 or bh <= 0:
            raise InputError(f"bbox has no area: {bbox}", path=path, record=rec, field="bbox")
        img = by_id[ann["image_id"]]
        x1, y1 = min(max(x, 0.0), img.width), min(max(y, 0.0), img.height)
        x2, y2 = min(max(x + bw, 0.0), img.width), min(max(y + bh, 0.0), img.height)
        if x2 <= x1 or y2 <= y1:
            raise InputError(
                f"bbox lies outside the {img.width}x{img.height} image", path=path, record=rec, field="bbox"
            )
        boxes[ann["image_id"]].append([x1, y1, x2, y2])
        classes[ann["image_id"]].append(cat_index[ann["category_id"]])
    for key, entry in by_id.items():
        if boxes[key]:
            entry.boxes = np.asarray(boxes[key], dtype=np.float32)
            entry.class_ids = np.asarray(classes[key], dtype=np.int64)
    return BoxFile(path=path, images=images, categories=categories)


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip x1 y1 x2 y2 boxes to the image."""
    out = np.asarray(boxes, dtype=np.float32).copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


def grid_boxes(width: int, height: int, n: int) -> np.ndarray:
    """The whole-image box followed by an `n x n` grid of cells (row-major): `[1 + n*n, 4]` float32."""
    if n < 1:
        raise ConfigError(f"grid size must be >= 1, got {n}")
    xs = np.linspace(0.0, float(width), n + 1)
    ys = np.linspace(0.0, float(height), n + 1)
    cells = [[xs[j], ys[i], xs[j + 1], ys[i + 1]] for i in range(n) for j in range(n)]
    return np.asarray([[0.0, 0.0, float(width), float(height)], *cells], dtype=np.float32)


@dataclass
class Detections:
    """A detector's output for one image. `class_ids` are 0-based without background."""

    boxes: np.ndarray  # [N, 4] float32 x1 y1 x2 y2
    class_ids: np.ndarray | None = None  # [N] int64
    scores: np.ndarray | None = None  # [N] float32
    class_probs: np.ndarray | None = None  # [N, K]


@runtime_checkable
class Detector(Protocol):
    """Anything that proposes boxes for an RGB PIL image. `class_names[i]` names class id i (may be empty)."""

    class_names: list[str]

    def detect(self, image: Any) -> Detections: ...


class TorchvisionFasterRCNNDetector:
    """torchvision's Faster R-CNN (ResNet-50 FPN) from a local checkpoint; an optional extra for GPU users.

    torchvision is imported only here, so the rest of the package never needs it. The checkpoint is a state dict
    (or a dict with a "model" key) for `fasterrcnn_resnet50_fpn(num_classes=...)`; nothing is downloaded.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        num_classes: int = 91,
        class_names: list[str] | None = None,
        score_threshold: float = 0.2,
        min_boxes: int = 10,
        max_boxes: int = 100,
        device: str = "cpu",
    ) -> None:
        try:
            import torch
            from torchvision.models.detection import fasterrcnn_resnet50_fpn
            from torchvision.transforms.functional import to_tensor
        except Exception as exc:  # ImportError, or torchvision's broken compiled ops beside a CPU torch
            raise ImportError(f"the torchvision detector needs a working torchvision: {exc}") from exc
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"detector checkpoint not found: {checkpoint}")
        self._torch = torch
        self._to_tensor = to_tensor
        self.model = fasterrcnn_resnet50_fpn(
            weights=None,
            weights_backbone=None,
            num_classes=num_classes,
            box_detections_per_img=max_boxes,
            box_score_thresh=0.0,
        )
        try:
            state = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
            self.model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
        except Exception as exc:  # unreadable file, wrong architecture or class count
            raise InputError(f"cannot load detector checkpoint: {exc}", path=checkpoint) from exc
        self.model.to(device).eval()
        self.device = device
        self.class_names = class_names or [str(i) for i in range(num_classes - 1)]
        self.score_threshold = score_threshold
        self.min_boxes = min_boxes
        self.max_boxes = max_boxes

    def detect(self, image: Any) -> Detections:
        with self._torch.no_grad():
            out = self.model([self._to_tensor(image).to(self.device)])[0]
        scores = out["scores"].float().cpu().numpy()
        order = np.argsort(-scores)
        keep = int(max(self.min_boxes, (scores >= self.score_threshold).sum()))
        order = order[: min(keep, self.max_boxes)]
        return Detections(
            boxes=out["boxes"].float().cpu().numpy()[order].astype(np.float32),
            class_ids=(out["labels"].cpu().numpy()[order] - 1).astype(np.int64),  # drop the background column
            scores=scores[order].astype(np.float32),
        )


def load_detector(spec: str, checkpoint: str | None = None, device: str = "cpu") -> Detector:
    """`torchvision-frcnn` (needs `checkpoint`) or a plug-in `package.module:factory` called as
    `factory(checkpoint=..., device=...)` that returns a `Detector`. A bad choice is a ConfigError."""
    if spec == "torchvision-frcnn":
        if not checkpoint:
            raise ConfigError("--detector torchvision-frcnn needs --detector-checkpoint")
        try:
            return TorchvisionFasterRCNNDetector(checkpoint, device=device)
        except ImportError as exc:
            raise ConfigError(f"--detector torchvision-frcnn: {exc}") from exc
    if ":" not in spec:
        raise ConfigError(f"unknown detector {spec!r}: use torchvision-frcnn or package.module:factory")
    import importlib

    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--detector {spec}: cannot load the plug-in: {exc}") from exc
    detector = factory(checkpoint=checkpoint, device=device)
    if not isinstance(detector, Detector):
        raise ConfigError(
            f"--detector {spec} did not return a Detector (needs class_names and detect(image))"
        )
    return detector
