"""The learned image-type filter: photograph or not, from EfficientNet-Lite0 features plus colour statistics.

Why learned: the colour heuristics (palette size, flat share, skin tones) reject real photographs (every grayscale
photo has at most 32 colours at 5 bits; a cat or an espresso is "skin"), while an ImageNet CNN's pooled features
separate natural images from rendered graphics well. The model is a logistic regression over the 1280 pooled
trunk features of the ImageNet EfficientNet-Lite0 the project already installs (224 x 224 input, the weights'
own `(x - 127) / 128` scaling) and six colour statistics, standardised. Its weights (about 5 KB) ship in
`imagebert/lait/weights/photo_classifier.safetensors` with the decision threshold in the metadata; train one with
`imagebert lait train-photo-classifier` on the set `imagebert lait make-photo-set` writes.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

SHIPPED = Path(__file__).resolve().parent / "weights" / "photo_classifier.safetensors"
INPUT_SIDE = 224
COLOUR_FEATURES = (
    "log_colors",
    "flat_fraction",
    "edge_density",
    "saturation_mean",
    "top_color_share",
    "gray",
)


def colour_statistics(image: Image.Image) -> np.ndarray:
    """Six cheap statistics of a 128 px copy: log2 palette size (5 bits), flat-pixel share, edge share, mean
    saturation, share of the most common colour, and whether the image is gray."""
    small = image.convert("RGB").copy()
    small.thumbnail((128, 128), Image.Resampling.NEAREST)
    a = np.asarray(small, dtype=np.int16)
    q = (a >> 3).reshape(-1, 3)
    codes = q[:, 0] * 1024 + q[:, 1] * 32 + q[:, 2]
    _, counts = np.unique(codes, return_counts=True)
    g = a.mean(axis=2)
    dx, dy = np.abs(np.diff(g, axis=1))[:-1, :], np.abs(np.diff(g, axis=0))[:, :-1]
    flat = float(((dx == 0) & (dy == 0)).mean())
    edges = float(((dx > 20) | (dy > 20)).mean())
    mx, mn = a.max(axis=2), a.min(axis=2)
    sat = float(((mx - mn) / np.maximum(mx, 1)).mean())
    gray = float(np.abs(a[..., 0] - a[..., 1]).mean() + np.abs(a[..., 1] - a[..., 2]).mean() < 2.0)
    return np.array(
        [math.log2(len(counts)), flat, edges, sat, counts.max() / codes.size, gray], dtype=np.float32
    )


class PhotoFeatures:
    """Pooled EfficientNet-Lite0 trunk features (1280) + colour statistics (6) for a batch of RGB images."""

    def __init__(self, device: str = "cpu") -> None:
        from imagebert.extraction.backbone import EfficientNetLite0Backbone

        self.device = torch.device(device)
        self.trunk = EfficientNetLite0Backbone().to(self.device)

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image], batch_size: int = 16) -> np.ndarray:
        out = []
        for i in range(0, len(images), batch_size):
            chunk = images[i : i + batch_size]
            x = np.stack(
                [
                    np.asarray(
                        im.convert("RGB").resize((INPUT_SIDE, INPUT_SIDE), Image.Resampling.BILINEAR),
                        dtype=np.float32,
                    )
                    for im in chunk
                ]
            )
            t = torch.from_numpy(x).permute(0, 3, 1, 2).to(self.device)
            pooled = self.trunk(t).float().mean(dim=(2, 3)).cpu().numpy()
            stats = np.stack([colour_statistics(im) for im in chunk])
            out.append(np.concatenate([pooled, stats], axis=1))
        return np.concatenate(out) if out else np.zeros((0, 1280 + len(COLOUR_FEATURES)), np.float32)


@lru_cache(maxsize=2)
def get_photo_features(device: str = "cpu") -> PhotoFeatures:
    """One trunk per worker process."""
    return PhotoFeatures(device)


class PhotoModel:
    """Standardise, then logistic regression: P(photograph)."""

    def __init__(
        self,
        weight: np.ndarray,
        bias: float,
        mean: np.ndarray,
        std: np.ndarray,
        threshold: float,
        info: dict | None = None,
    ) -> None:
        self.weight = weight.astype(np.float32)
        self.bias = float(bias)
        self.mean = mean.astype(np.float32)
        self.std = std.astype(np.float32)
        self.threshold = float(threshold)
        self.info = info or {}

    def prob(self, feats: np.ndarray) -> np.ndarray:
        z = ((feats - self.mean) / self.std) @ self.weight + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "kind": "imagebert-lait-photo-classifier",
            "features": json.dumps(
                {"trunk": "efficientnet-lite0-pooled-1280", "input": INPUT_SIDE, "colour": COLOUR_FEATURES}
            ),
            "threshold": repr(self.threshold),
            "bias": repr(self.bias),
            "info": json.dumps(self.info),
        }
        save_file({"weight": self.weight, "mean": self.mean, "std": self.std}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> PhotoModel:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"photo classifier weights not found: {path}")
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("kind") != "imagebert-lait-photo-classifier":
                raise ValueError(
                    f"{path}: not a LAIT photo classifier (metadata 'kind' is {meta.get('kind')!r})"
                )
            t = {k: f.get_tensor(k) for k in ("weight", "mean", "std")}
        return cls(
            t["weight"],
            float(meta["bias"]),
            t["mean"],
            t["std"],
            float(meta["threshold"]),
            json.loads(meta.get("info", "{}")),
        )


def fit_photo_model(
    x: np.ndarray, y: np.ndarray, l2: float = 3e-3, steps: int = 300, seed: int = 0
) -> PhotoModel:
    """Class-balanced, L2-regularised logistic regression (full-batch L-BFGS in torch, deterministic)."""
    torch.manual_seed(seed)
    mean = x.mean(axis=0)
    std = x.std(axis=0) + 1e-3
    xs = torch.from_numpy(((x - mean) / std).astype(np.float32))
    yt = torch.from_numpy(y.astype(np.float32))
    pos = float(yt.mean())
    sample_w = torch.where(yt > 0.5, 0.5 / max(pos, 1e-6), 0.5 / max(1 - pos, 1e-6))
    w = torch.zeros(xs.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(xs @ w + b, yt, reduction="none") * sample_w
        ).mean()
        loss = loss + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return PhotoModel(w.detach().numpy(), float(b.detach()), mean, std, 0.5)


def precision_recall(prob: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float]:
    """Photographs are the positive class: recall = photos kept / photos; precision = photos among kept."""
    keep = prob >= threshold
    tp = int((keep & (y == 1)).sum())
    fp = int((keep & (y == 0)).sum())
    fn = int((~keep & (y == 1)).sum())
    return {
        "precision": tp / max(1, tp + fp),
        "recall": tp / max(1, tp + fn),
        "photos": int((y == 1).sum()),
        "non_photos": int((y == 0).sum()),
        "photos_kept": tp,
        "non_photos_kept": fp,
    }


def grouped_folds(groups: Sequence[str], labels: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """k folds of whole sources (photo sources and non-photo sources dealt out separately, so each fold holds
    out both kinds): an image and all its crops/re-encodes are always on the same side."""
    rng = random.Random(seed)
    fold_of: dict[str, int] = {}
    for label in (1, 0):
        names = sorted({g for g, y in zip(groups, labels) if y == label})
        rng.shuffle(names)
        for i, g in enumerate(names):
            fold_of[g] = i % k
    f = np.array([fold_of[g] for g in groups])
    return [np.flatnonzero(f == i) for i in range(k)]


def cross_validate(
    x: np.ndarray,
    y: np.ndarray,
    groups: Sequence[str],
    k: int = 5,
    seed: int = 0,
    threshold: float = 0.5,
    **fit_kw,
) -> dict[str, Any]:
    """Out-of-fold P(photo) for every image from a model that never saw its source; pooled precision/recall."""
    oof = np.zeros(len(y))
    for test in grouped_folds(groups, y, k, seed):
        train = np.setdiff1d(np.arange(len(y)), test)
        oof[test] = fit_photo_model(x[train], y[train], **fit_kw).prob(x[test])
    per_source: dict[str, dict[str, float]] = {}
    for g in sorted(set(groups)):
        idx = np.array([i for i, s in enumerate(groups) if s == g])
        kept = float((oof[idx] >= threshold).mean())
        per_source[g] = {"label": int(y[idx[0]]), "n": len(idx), "kept_share": kept}
    return {"oof": oof, "at_threshold": precision_recall(oof, y, threshold), "per_source": per_source}


def load_photo_rows(labels: str | Path) -> list[dict]:
    """Rows of a labels.jsonl written by make-photo-set (or by hand): image path, label photo|non_photo, source."""
    from imagebert.errors import InputError

    labels = Path(labels)
    if not labels.is_file():
        raise InputError("labels file not found", path=labels)
    rows = []
    for i, line in enumerate(labels.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"not JSON: {exc.msg}", path=labels, record=i) from None
        for key in ("image", "label", "source"):
            if key not in row:
                raise InputError("missing", path=labels, record=i, field=key)
        if row["label"] not in ("photo", "non_photo"):
            raise InputError(
                f"must be 'photo' or 'non_photo', got {row['label']!r}", path=labels, record=i, field="label"
            )
        img = Path(row["image"])
        img = img if img.is_absolute() else labels.parent / img
        if not img.is_file():
            raise InputError(f"image not found: {img}", path=labels, record=i, field="image")
        rows.append({**row, "image": str(img), "_line": i})
    return rows


def train_photo_classifier(
    labels: str | Path,
    out: str | Path,
    folds: int = 5,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Features for every image, grouped cross-validation (whole sources held out), then the final model on all
    rows; writes the weights and returns the metrics."""
    from imagebert.errors import InputError

    rows = load_photo_rows(labels)
    images = []
    for r in rows:
        try:
            with Image.open(r["image"]) as im:
                images.append(im.convert("RGB"))
        except Exception as exc:  # noqa: BLE001
            raise InputError(
                f"cannot decode image: {exc}", path=labels, record=r["_line"], field="image"
            ) from None
    log(f"features for {len(images)} images ...")
    x = get_photo_features(device)(images)
    y = np.array([1.0 if r["label"] == "photo" else 0.0 for r in rows])
    groups = [r["source"] for r in rows]
    if (
        len({g for g, v in zip(groups, y) if v == 1}) < folds
        or len({g for g, v in zip(groups, y) if v == 0}) < folds
    ):
        raise InputError(
            f"needs at least {folds} photo and {folds} non-photo sources", path=labels, field="source"
        )
    cv = cross_validate(x, y, groups, k=folds)
    model = fit_photo_model(x, y)
    model.info = {
        "rows": len(rows),
        "photo_sources": sorted({g for g, v in zip(groups, y) if v == 1}),
        "cv_folds": folds,
        "cv_precision": round(cv["at_threshold"]["precision"], 4),
        "cv_recall": round(cv["at_threshold"]["recall"], 4),
    }
    model.save(out)
    return {
        "cv": cv["at_threshold"],
        "per_source": cv["per_source"],
        "train": precision_recall(model.prob(x), y, model.threshold),
        "out": str(out),
    }


def learned_type(cfg: Any) -> Callable[[Image.Image], tuple[str, float]]:
    """`images.type_classifier: learned`: the shipped model (or `images.photo_model`), threshold from the file
    unless `images.photo_threshold` is set. Returns ("non_photo", P(photo)) for an image to reject."""
    model = PhotoModel.load(getattr(cfg, "photo_model", None) or SHIPPED)
    threshold = getattr(cfg, "photo_threshold", None)
    threshold = model.threshold if threshold is None else float(threshold)
    features = get_photo_features("cpu")

    def classify(image: Image.Image) -> tuple[str, float]:
        p = float(model.prob(features([image]))[0])
        return ("normal", p) if p >= threshold else ("non_photo", p)

    classify.batch = lambda images: [  # type: ignore[attr-defined]
        ("normal", float(p)) if p >= threshold else ("non_photo", float(p))
        for p in model.prob(features(images))
    ]
    return classify
