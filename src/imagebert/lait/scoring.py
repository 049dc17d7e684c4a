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
    "starts_with_determiner",  # "A ...", "The ...", "Two ...": how descriptions open
    "pronoun_ratio",  # share of first/second-person words (we, our, you, ...): page prose and calls to action
    "date_or_ui",  # month names, "posted", "page N of M", "read more", "share", "sign up", "follow us" ...
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
    "starts_with_determiner": 0.0,
    "pronoun_ratio": 0.0,
    "date_or_ui": 0.0,
}

_DETERMINERS = {"a", "an", "the", "two", "three", "several", "some", "this", "one", "four", "many"}
_PRONOUNS = {"we", "our", "us", "you", "your", "i", "my", "me", "ours", "yours"}
_DATE_UI = re.compile(
    r"\b(january|february|march|april|may|june|july|august|september|october|november|december|posted|"
    r"page \d+|read more|continue reading|share|sign up|subscribe|newsletter|follow us|comment|previous|next post|"
    r"related posts|back to)\b",
    re.I,
)


def text_image_features(
    text: str, source: str, n_words: int, oov: float, width: int, height: int
) -> dict[str, float]:
    digits = sum(c.isdigit() for c in text)
    short, long_ = min(width, height), max(width, height)
    tokens = [t.lower() for t in _WORDS.findall(text)]
    return {
        "starts_with_determiner": float(bool(tokens) and tokens[0] in _DETERMINERS),
        "pronoun_ratio": sum(t in _PRONOUNS for t in tokens) / max(1, len(tokens)),
        "date_or_ui": float(bool(_DATE_UI.search(text))),
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


_WORDS = re.compile(r"[A-Za-z]+")
SHIPPED_SCORER = Path(__file__).resolve().parent / "weights" / "scorer_default.safetensors"


@dataclass
class Scorer:
    weights: np.ndarray
    feature_names: tuple[str, ...] = FEATURES
    neural: bool = False
    threshold: float = 0.5  # the run keeps a pair when score >= threshold (unless scoring.min_score is set)
    info: dict | None = None

    @classmethod
    def default(cls, neural: bool = False) -> Scorer:
        """The hand-set priors (`scoring.model: hand`)."""
        return cls(np.array([DEFAULT_WEIGHTS[f] for f in FEATURES], dtype=np.float64), FEATURES, neural)

    @classmethod
    def shipped(cls, neural: bool = False) -> Scorer:
        """The default: trained by `lait make-scorer-set` + `lait train-scorer` (docs/lait.md)."""
        s = cls.load(SHIPPED_SCORER)
        s.neural = s.neural or neural
        return s

    def vector(self, feats: dict[str, float]) -> np.ndarray:
        return np.array([feats.get(f, 0.0) for f in self.feature_names], dtype=np.float64)

    def score(self, feats: dict[str, float], text: str | None = None, image: Any = None) -> float:
        """Relevance in [0, 1]. `text` and `image` are unused here; a user scorer may use them."""
        z = float(self.vector(feats) @ self.weights)
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))

    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        meta = {
            "feature_names": json.dumps(list(self.feature_names)),
            "neural": json.dumps(self.neural),
            "threshold": repr(float(self.threshold)),
            "info": json.dumps(self.info or {}),
        }
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
        return cls(
            weights.astype(np.float64),
            names,
            json.loads(meta.get("neural", "false")),
            float(meta.get("threshold", "0.5")),
            json.loads(meta.get("info", "{}")),
        )


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


def word_set(text: str) -> set[str]:
    return {w.lower() for w in _WORDS.findall(text) if len(w) > 2}


def roc_auc(p: np.ndarray, y: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    pos, neg = p[y > 0.5], p[y <= 0.5]
    if not len(pos) or not len(neg):
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def calibration(p: np.ndarray, y: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Expected calibration error and the reliability table (mean score vs share related, per score bin)."""
    edges = np.linspace(0, 1, bins + 1)
    table, ece = [], 0.0
    for i in range(bins):
        m = (p >= edges[i]) & ((p < edges[i + 1]) if i < bins - 1 else (p <= 1))
        if m.any():
            gap = abs(float(p[m].mean()) - float(y[m].mean()))
            ece += gap * m.mean()
            table.append(
                {
                    "bin": f"{edges[i]:.1f}-{edges[i + 1]:.1f}",
                    "n": int(m.sum()),
                    "mean_score": round(float(p[m].mean()), 4),
                    "share_related": round(float(y[m].mean()), 4),
                }
            )
    return {"ece": round(float(ece), 4), "bins": table}


def threshold_for_precision(p: np.ndarray, y: np.ndarray, target: float) -> tuple[float, bool]:
    """The lowest score threshold whose kept set reaches `target` precision (most recall); (threshold, reached).
    When no threshold reaches it, the one with the best precision (ties: most recall) and False."""
    best: tuple[float, float, float] | None = None  # (precision, recall, threshold)
    npos = max(1.0, float((y > 0.5).sum()))
    for t in np.unique(p):
        keep = p >= t
        prec = float(y[keep].mean())
        rec = float(y[keep].sum()) / npos
        if prec >= target:
            return float(t), True
        if best is None or (prec, rec) > best[:2]:
            best = (prec, rec, float(t))
    return (best[2] if best else 0.5), False


def stratified_folds(y: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(y), dtype=int)
    for label in (0, 1):
        idx = np.flatnonzero((y > 0.5) == bool(label))
        rng.shuffle(idx)
        fold[idx] = np.arange(len(idx)) % k
    return [np.flatnonzero(fold == i) for i in range(k)]


def train_scorer(
    rows: list[dict],
    feature_fn: Callable[[dict], dict[str, float]],
    neural: bool,
    target_precision: float = 0.9,
    folds: int = 5,
) -> tuple[Scorer, dict[str, Any]]:
    """Fit on labelled rows (each turned into features by `feature_fn`).

    Held-out figures come from k-fold cross-validation (each row scored by a model fit without it): ROC AUC,
    calibration (ECE + reliability table) and the threshold chosen for `target_precision`, which is stored in
    the scorer file; the stored weights are then fit on every row."""
    x = np.stack([np.array([feature_fn(r).get(f, 0.0) for f in FEATURES]) for r in rows])
    y = np.array([float(r["related"]) for r in rows])
    k = int(min(folds, (y > 0.5).sum(), (y <= 0.5).sum()))
    oof = np.zeros(len(y))
    if k >= 2:
        for test in stratified_folds(y, k):
            train = np.setdiff1d(np.arange(len(y)), test)
            w_fold = fit_logistic(x[train], y[train])
            oof[test] = 1.0 / (1.0 + np.exp(-np.clip(x[test] @ w_fold, -50, 50)))
    w = fit_logistic(x, y)
    p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -50, 50)))
    held = oof if k >= 2 else p
    threshold, reached = threshold_for_precision(held, y, target_precision)
    keep = held >= threshold
    metrics: dict[str, Any] = {
        "rows": len(rows),
        "positives": int(y.sum()),
        "train_accuracy": float(((p >= threshold) == (y >= 0.5)).mean()),
        "heldout": f"cross-validated, {k} folds"
        if k >= 2
        else "none (too few rows: figures are on the training rows)",
        "heldout_auc": round(roc_auc(held, y), 4),
        "calibration": calibration(held, y),
        "target_precision": target_precision,
        "threshold": round(threshold, 6),
        "target_reached": reached,
        "heldout_precision": round(float(y[keep].mean()) if keep.any() else 0.0, 4),
        "heldout_recall": round(float(y[keep].sum() / max(1.0, y.sum())), 4),
        "score_range": [round(float(held.min()), 4), round(float(held.max()), 4)],
    }
    scorer = Scorer(
        w, FEATURES, neural, threshold, {k2: v for k2, v in metrics.items() if k2 != "calibration"}
    )
    return scorer, metrics
