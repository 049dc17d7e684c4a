"""Fixtures: a tiny BERT folder (2 layers, hidden 64, the real uncased vocab) and a tiny in-memory corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imagebert.data.types import Caption, RegionRecord

FEATURE_DIM = 16
NUM_CLASSES = 7
WORDS = [
    "a",
    "dog",
    "cat",
    "man",
    "woman",
    "red",
    "blue",
    "ball",
    "park",
    "street",
    "car",
    "tree",
    "sits",
    "runs",
    "on",
    "in",
    "the",
    "with",
    "near",
    "small",
    "big",
]


def make_tiny_bert(folder: Path) -> Path:
    """A BERT folder small enough to train in a test: 2 layers, hidden 64, a 60-piece WordPiece vocab."""
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", "##ed", "##ing", "."]
    pieces += [f"w{i}" for i in range(60 - len(pieces))]
    (folder / "vocab.txt").write_text("\n".join(pieces) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text('{"do_lower_case": true}', encoding="utf-8")
    cfg = BertConfig(
        vocab_size=len(pieces), hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        max_position_embeddings=64, pad_token_id=0,
    )  # fmt: skip
    import torch

    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(folder)
    return folder


def make_corpus(num_images: int = 12, captions_per_image: int = 2, seed: int = 0):
    """Images whose features encode their 'topic'; captions name the topic, so ITM/MLM/MOC are learnable."""
    rng = np.random.default_rng(seed)
    records, captions = [], []
    for i in range(num_images):
        n = int(rng.integers(3, 9))
        topic = i % len(WORDS)
        base = rng.normal(size=FEATURE_DIM).astype(np.float32)
        feats = (base + 0.1 * rng.normal(size=(n, FEATURE_DIM))).astype(np.float32)
        x1 = rng.uniform(0, 50, n)
        y1 = rng.uniform(0, 50, n)
        boxes = np.stack([x1, y1, x1 + rng.uniform(5, 50, n), y1 + rng.uniform(5, 50, n)], 1).astype(
            np.float32
        )
        classes = rng.integers(-1, NUM_CLASSES, n).astype(np.int64)  # some regions without a class (-1)
        records.append(RegionRecord(f"img{i:03d}", feats, boxes, 120, 110, classes))
        for c in range(captions_per_image):
            words = [WORDS[topic], *rng.choice(WORDS, size=int(rng.integers(3, 9))).tolist()]
            captions.append(Caption(f"img{i:03d}", " ".join(words), f"img{i:03d}#{c}"))
    return captions, records


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture()
def corpus():
    return make_corpus()


def write_dataset(folder: Path, captions, records, name: str = "tiny") -> Path:
    """A real dataset on disk through the data API: an LMDB feature store, a caption JSONL and a dataset YAML."""
    import json

    from imagebert.data.store import FeatureStoreWriter

    folder.mkdir(parents=True, exist_ok=True)
    with FeatureStoreWriter(folder / "store", feature_dim=FEATURE_DIM) as w:
        for rec in records:
            w.add(rec)
    with open(folder / "captions.jsonl", "w", encoding="utf-8") as fh:
        for c in captions:
            fh.write(
                json.dumps({"image_id": c.image_id, "caption": c.text, "caption_id": c.caption_id}) + "\n"
            )
    spec = folder / f"{name}.yaml"
    spec.write_text(
        f"name: {name}\nfeature_store: store\ncaptions:\n  - path: captions.jsonl\n    format: caption-list\n",
        encoding="utf-8",
    )
    return spec


def tiny_model_overrides() -> dict:
    return {
        "visual_feature_dim": FEATURE_DIM,
        "num_object_classes": NUM_CLASSES,
        "max_regions": 10,
        "max_text_tokens": 16,
        "sep_token_id": 3,
    }


def write_pretrain_yaml(
    path: Path, bert: Path, datasets: list[Path], steps: int = 4, extra: str = ""
) -> Path:
    ds = "\n".join(f"      - {d}" for d in datasets)
    model = "\n".join(f"  {k}: {v}" for k, v in tiny_model_overrides().items())
    path.write_text(
        f"""init_from_bert: {bert}
model:
{model}
training:
  batch_size: 4
  learning_rate: 0.001
  log_every: 1
  checkpoint_every: 2
  progress_bar: false
  tensorboard: false
stages:
  - name: s1
    steps: {steps}
    datasets:
{ds}
{extra}""",
        encoding="utf-8",
    )
    return path


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core box: one intra-op thread is ~10x faster than two fighting threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
