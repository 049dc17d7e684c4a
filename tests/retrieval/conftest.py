"""Tiny models and synthetic but learnable galleries for the retrieval tests.

Each image shows one (colour, object) concept: two of its regions carry the colour's and the object's feature
vectors (plus noise), the rest are noise; its captions name the colour and the object. A model can learn the
match, so fine-tuning has something to improve.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from imagebert.data.types import Caption, RegionRecord

FEATURE_DIM = 16
COLOURS = ["red", "blue", "green", "yellow", "black", "white"]
OBJECTS = ["dog", "car", "boat", "horse", "chair", "bird"]
TEMPLATES = [
    "a {c} {o}",
    "the {c} {o} outside",
    "a photo of a {c} {o}",
    "one {c} {o} here",
    "there is a {c} {o}",
]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is over 10x faster than two fighting for
    cores with other processes. Restored after each test so other areas' tests are unaffected."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model_config(**overrides):
    from imagebert.modeling import ImageBertConfig

    kw = dict(
        vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        max_position_embeddings=64, visual_feature_dim=FEATURE_DIM, num_object_classes=8, max_regions=8,
        max_text_tokens=16, itc_dim=32,
        itc_trained_steps=1,  # these tests check the mechanics of fast mode, which refuses untrained projections
    )  # fmt: skip
    kw.update(overrides)
    return ImageBertConfig(**kw)


def make_records(num_images: int, seed: int = 0, captions_per_image: int = 5, prefix: str = "img"):
    """(records, captions): image k shows concept k (mod 36); captions follow TEMPLATES."""
    rng = np.random.default_rng(seed)
    basis = (
        np.random.default_rng(1234).normal(size=(len(COLOURS) + len(OBJECTS), FEATURE_DIM)).astype(np.float32)
    )
    records, captions = [], []
    for k in range(num_images):
        c, o = k % len(COLOURS), (k // len(COLOURS)) % len(OBJECTS)
        n = int(rng.integers(3, 7))
        feats = rng.normal(scale=0.3, size=(n, FEATURE_DIM)).astype(np.float32)
        feats[0] += basis[c]
        feats[1] += basis[len(COLOURS) + o]
        boxes = np.array([[2 * i, 2 * i, 2 * i + 20, 2 * i + 30] for i in range(n)], dtype=np.float32)
        iid = f"{prefix}{k:04d}"
        records.append(RegionRecord(iid, feats, boxes, 100, 80, class_ids=np.arange(n) % 8))
        for j in range(captions_per_image):
            text = TEMPLATES[j % len(TEMPLATES)].format(c=COLOURS[c], o=OBJECTS[o])
            captions.append(Caption(iid, text, f"{iid}#{j}", "test"))
    return records, captions


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A 'pre-training' checkpoint folder: tiny ImageBertForPreTraining + the shipped tokenizer."""
    from imagebert.modeling import ImageBertForPreTraining, load_tokenizer

    out = tmp_path_factory.mktemp("tiny_ckpt")
    torch.manual_seed(0)
    model = ImageBertForPreTraining(tiny_model_config())
    model.save_pretrained(out)
    load_tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_and_collator(tiny_checkpoint):
    from imagebert.retrieval.evaluate import load_retrieval_model

    return load_retrieval_model(tiny_checkpoint)


def write_karpathy_dataset(root: Path, splits: dict[str, int], seed: int = 0) -> Path:
    """A real on-disk dataset: Karpathy-format JSON + feature store + dataset YAML. Returns the YAML path."""
    from imagebert.data.store import FeatureStoreWriter

    root.mkdir(parents=True, exist_ok=True)
    images, all_records = [], []
    offset = 0
    for split, n in splits.items():
        records, captions = make_records(n, seed=seed + offset, prefix=f"{split}")
        # shift concepts so splits differ but overlap in vocabulary
        for r in records:
            all_records.append(r)
        by_img: dict[str, list[Caption]] = {}
        for c in captions:
            by_img.setdefault(c.image_id, []).append(c)
        for r in records:
            images.append({
                "filename": f"{r.image_id}.jpg", "imgid": len(images), "split": split,
                "sentences": [{"raw": c.text, "tokens": c.text.split(), "sentid": c.caption_id, "imgid": len(images)}
                              for c in by_img[r.image_id]],
            })  # fmt: skip
        offset += n
    (root / "dataset_flickr30k.json").write_text(json.dumps({"images": images}), encoding="utf-8")
    with FeatureStoreWriter(root / "store", feature_dim=FEATURE_DIM, dtype="float32") as w:
        for r in all_records:
            w.add(r)
    yml = root / "dataset.yaml"
    yml.write_text(
        "name: tiny\nfeature_store: store\ncaptions:\n  - path: dataset_flickr30k.json\n    format: karpathy\n"
        "    dataset: flickr30k\n",
        encoding="utf-8",
    )
    return yml
