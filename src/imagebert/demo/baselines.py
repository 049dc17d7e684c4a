"""A bag-of-words retrieval baseline for the demo report: caption words against each image's true labels.

It sees the ground truth (object classes, colours and sizes from the box file) but no binding or geometry, so
it shows how far words alone go. On the demo's distractor pairs it ties by construction; a model that beats it
has learnt to bind attributes to objects and to read positions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from imagebert.demo.corpus import CLASSES, COLORS, SIZES, tokenize

__all__ = ["bag_of_words_scores", "caption_terms", "demo_image_terms", "label_vocabulary"]


def label_vocabulary() -> frozenset[str]:
    """Every word that can name a true label of a demo image."""
    return frozenset(CLASSES) | frozenset(COLORS) | frozenset(SIZES)


def _singular(word: str, vocab: frozenset[str]) -> str:
    if word in vocab:
        return word
    if word.endswith("es") and word[:-2] in vocab:
        return word[:-2]
    if word.endswith("s") and word[:-1] in vocab:
        return word[:-1]
    return word


def caption_terms(caption: str, vocab: frozenset[str] | None = None) -> set[str]:
    """The label words a caption mentions (plurals folded: 'stars' -> 'star'); other words carry no evidence."""
    vocab = label_vocabulary() if vocab is None else vocab
    return {w for w in (_singular(t, vocab) for t in tokenize(caption)) if w in vocab}


def bag_of_words_scores(
    captions: Sequence[str],
    image_terms: Sequence[Iterable[str]],
    miss_penalty: float = 1.0,
    vocab: frozenset[str] | None = None,
) -> np.ndarray:
    """Score matrix `[num_captions, num_images]`: +1 per caption label word the image has, `-miss_penalty` per
    caption label word it lacks. Higher is a better match; ties are real (the baseline cannot break them)."""
    vocab = label_vocabulary() if vocab is None else vocab
    terms = sorted(vocab)
    index = {w: i for i, w in enumerate(terms)}
    cap = np.zeros((len(captions), len(terms)), np.float32)
    for r, c in enumerate(captions):
        for w in caption_terms(c, vocab):
            cap[r, index[w]] = 1.0
    img = np.zeros((len(image_terms), len(terms)), np.float32)
    for r, ts in enumerate(image_terms):
        for w in ts:
            if w in index:
                img[r, index[w]] = 1.0
    hits = cap @ img.T
    misses = cap.sum(1, keepdims=True) - hits
    return hits - miss_penalty * misses


def demo_image_terms(boxes_json: str | os.PathLike, id_mode: str = "stem") -> Mapping[str, set[str]]:
    """Each image's true label words from a COCO-style box file: category names plus the `attributes` values
    (colour, size) the demo writes. Keys are the store's image ids (file name stem by default)."""
    data = json.loads(Path(boxes_json).read_text(encoding="utf-8"))
    names = {c["id"]: str(c["name"]).lower() for c in data["categories"]}
    by_image: dict = {img["id"]: set() for img in data["images"]}
    for ann in data["annotations"]:
        words = by_image[ann["image_id"]]
        words.add(names[ann["category_id"]])
        for value in (ann.get("attributes") or {}).values():
            words.add(str(value).lower())
    out: dict[str, set[str]] = {}
    for img in data["images"]:
        key = Path(img["file_name"]).stem if id_mode == "stem" else str(img["id"])
        out[key] = by_image[img["id"]]
    return out
