"""Step 4: a weak-supervised relevance model over text-only, image-only and cross-modal features.

The model is a logistic regression. Without labels, documented hand-set weights are used (DEFAULT_WEIGHTS);
`imagebert lait train-scorer` fits the weights on a small labelled set and saves them as safetensors (no pickle).
Cross-modal features need the optional neural path (scoring.neural: true); otherwise they are 0.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = (
    "bias",
    "words_norm",  # min(words, 40) / 20
    "words_in_range",  # 1 when 5 <= words <= 25 (typical caption length; the paper's LAIT averages 13)
    "oov_ratio",
    "src_alt",
    "src_title",
    "src_og_description",
    "src_surrounding",
    "digit_ratio",
    "img_log_size",  # log2(short side / 300), clipped to [0, 4]
    "img_aspect",  # long side / short side - 1
    "label_confidence",  # neural: top-1 ImageNet probability
    "label_word_overlap",  # neural: caption words that occur in the top-k label names
    "label_similarity",  # neural: max cosine(MiniLM(caption), MiniLM(label name)) over the top-k labels, - 0.3
)

DEFAULT_WEIGHTS = {
    "bias": -0.5,
    "words_norm": 0.3,
    "words_in_range": 1.0,
    "oov_ratio": -3.0,
    "src_alt": 0.8,
    "src_title": 0.3,
    "src_og_description": 0.6,
    "src_surrounding": -1.0,
    "digit_ratio": -4.0,
    "img_log_size": 0.3,
    "img_aspect": -0.3,
    "label_confidence": 0.0,
    "label_word_overlap": 1.0,
    "label_similarity": 3.0,
}


def text_image_features(
    text: str, source: str, n_words: int, oov: float, width: int, height: int
) -> dict[str, float]:
    digits = sum(c.isdigit() for c in text)
    short, long_ = min(width, height), max(width, height)
    return {
        "bias": 1.0,
        "words_norm": min(n_words, 40) / 20.0,
        "words_in_range": 1.0 if 5 <= n_words <= 25 else 0.0,
        "oov_ratio": oov,
        "src_alt": float(source == "alt"),
        "src_title": float(source == "title"),
        "src_og_description": float(source == "og_description"),
        "src_surrounding": float(source == "surrounding"),
        "digit_ratio": digits / max(1, len(text)),
        "img_log_size": min(4.0, max(0.0, math.log2(max(short, 1) / 300.0))),
        "img_aspect": long_ / max(short, 1) - 1.0,
    }


@dataclass
class Scorer:
    weights: np.ndarray
    feature_names: tuple[str, ...] = FEATURES
    neural: bool = False

    @classmethod
    def default(cls, neural: bool = False) -> Scorer:
        return cls(np.array([DEFAULT_WEIGHTS[f] for f in FEATURES], dtype=np.float64), FEATURES, neural)

    def vector(self, feats: dict[str, float]) -> np.ndarray:
        return np.array([feats.get(f, 0.0) for f in self.feature_names], dtype=np.float64)

    def score(self, feats: dict[str, float], text: str | None = None, image: Any = None) -> float:
        """Relevance in [0, 1]. `text` and `image` are unused here; a user scorer may use them."""
        z = float(self.vector(feats) @ self.weights)
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))

    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        meta = {"feature_names": json.dumps(list(self.feature_names)), "neural": json.dumps(self.neural)}
        save_file({"weights": self.weights.astype(np.float64)}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> Scorer:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            weights = f.get_tensor("weights")
        names = tuple(json.loads(meta.get("feature_names", json.dumps(list(FEATURES)))))
        if len(names) != len(weights):
            raise ValueError(f"{path}: {len(weights)} weights for {len(names)} features")
        return cls(weights.astype(np.float64), names, json.loads(meta.get("neural", "false")))


def fit_logistic(
    x: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 2000, lr: float = 0.5
) -> np.ndarray:
    """Full-batch gradient descent on the mean log-loss + L2 (bias column 0 not regularised). Deterministic."""
    w = np.zeros(x.shape[1])
    reg = np.full(x.shape[1], l2)
    reg[0] = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -50, 50)))
        grad = x.T @ (p - y) / len(y) + reg * w
        w -= lr * grad
    return w


_WORDS = re.compile(r"[A-Za-z]+")


def word_set(text: str) -> set[str]:
    return {w.lower() for w in _WORDS.findall(text) if len(w) > 2}


def train_scorer(
    rows: list[dict], feature_fn: Callable[[dict], dict[str, float]], neural: bool
) -> tuple[Scorer, dict[str, float]]:
    """Fit on labelled rows (each turned into features by `feature_fn`); returns the scorer and its train metrics."""
    x = np.stack([np.array([feature_fn(r).get(f, 0.0) for f in FEATURES]) for r in rows])
    y = np.array([float(r["related"]) for r in rows])
    w = fit_logistic(x, y)
    scorer = Scorer(w, FEATURES, neural)
    p = 1.0 / (1.0 + np.exp(-(x @ w)))
    acc = float(((p >= 0.5) == (y >= 0.5)).mean())
    return scorer, {"train_accuracy": acc, "rows": float(len(rows)), "positives": float(y.sum())}
