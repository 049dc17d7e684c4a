"""ImageBertProcessor: the model's inputs from captions + region records, saved and loaded with models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoProcessor

from imagebert.data.collate import PairCollator
from imagebert.data.types import RegionRecord
from imagebert.modeling import ImageBertConfig, ImageBertForRetrieval, ImageBertProcessor
from imagebert.training.checkpoint import CheckpointError, load_processor

D = 16
MODEL_KEYS = ["input_ids", "attention_mask", "region_features", "region_locations", "region_mask"]


def _records(n: int, boxes: int = 3, seed: int = 0) -> list[RegionRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x1 = rng.uniform(0, 40, boxes)
        b = np.stack([x1, x1 / 2, x1 + 30, x1 / 2 + 20], 1).astype(np.float32)
        feats = rng.normal(size=(boxes, D)).astype(np.float32)
        out.append(RegionRecord(f"img{i}", feats, b, 100, 80, rng.integers(0, 5, boxes)))
    return out


def test_call_returns_exactly_the_model_inputs_of_the_collator(tokenizer):
    proc = ImageBertProcessor(tokenizer, max_text_tokens=8, max_regions=2, feature_dim=D)
    recs = _records(2)
    texts = ["a man riding a horse on a very long beach today", "dogs"]
    out = proc(text=texts, regions=recs)
    assert sorted(out.keys()) == sorted(MODEL_KEYS)
    ref = PairCollator(tokenizer, max_text_tokens=8, max_regions=2, feature_dim=D, truncate_regions=True)(
        list(zip(recs, texts))
    )
    for key in MODEL_KEYS:
        assert torch.equal(out[key], ref[key]), key
    assert out["input_ids"].shape[1] == 8 and out["region_features"].shape[1] == 2  # truncated to the sizes
    # x1/W, y1/H, x2/W, y2/H, area: the paper's 5-d location
    b = recs[0].boxes[0]
    area = (b[2] - b[0]) * (b[3] - b[1]) / (100 * 80)
    torch.testing.assert_close(
        out["region_locations"][0, 0], torch.tensor([b[0] / 100, b[1] / 80, b[2] / 100, b[3] / 80, area])
    )
    extras = proc(text=texts, regions=recs, return_extras=True)
    assert extras["image_ids"] == ["img0", "img1"] and extras["region_class_ids"].shape == (2, 2)
    assert torch.equal(
        proc(list(zip(recs, texts)))["region_features"], ref["region_features"]
    )  # collator form
    text_only = proc(text="a cat")
    assert sorted(text_only.keys()) == ["attention_mask", "input_ids"]
    with pytest.raises(ValueError, match="2 texts but 1 region"):
        proc(text=texts, regions=recs[:1])


def test_sizes_come_from_the_model_config_and_round_trip(tokenizer, tmp_path):
    config = ImageBertConfig(visual_feature_dim=D, max_regions=7, max_text_tokens=11)
    proc = ImageBertProcessor.from_config(config, tokenizer)
    assert (proc.feature_dim, proc.max_regions, proc.max_text_tokens) == (D, 7, 11)
    proc.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["max_regions"] == 7 and saved["feature_dim"] == D
    for back in (ImageBertProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert isinstance(back, ImageBertProcessor)
        assert (back.feature_dim, back.max_regions, back.max_text_tokens) == (D, 7, 11)
        assert back(text="a red circle")["input_ids"].tolist() == [[101, 1037, 2417, 4418, 102]]


def test_checkpoint_without_saved_processor_builds_one_from_config_and_tokenizer(
    tiny_bert_path, tokenizer, tmp_path
):
    model = ImageBertForRetrieval.init_from_bert(tiny_bert_path, visual_feature_dim=D, max_regions=9)
    old = tmp_path / "old"
    model.save_pretrained(old)
    tokenizer.save_pretrained(old)  # what checkpoints carried before processors were saved
    assert not (old / "processor_config.json").exists()
    proc = load_processor(old, model.config)
    assert (proc.feature_dim, proc.max_regions) == (D, 9)
    assert proc.tokenizer.convert_tokens_to_ids("horse") == tokenizer.convert_tokens_to_ids("horse")
    # a saved processor that does not fit the model is refused by name
    ImageBertProcessor(tokenizer, max_regions=9, feature_dim=D + 1).save_pretrained(tmp_path / "bad")
    with pytest.raises(CheckpointError, match="feature_dim=17 vs visual_feature_dim=16"):
        load_processor(tmp_path / "bad", model.config)


def test_data_package_does_not_import_modeling():
    """Batching is a data concern: the data package must not need the model package (it did, for boxes)."""
    import ast

    import imagebert.data

    bad = []
    for file in Path(imagebert.data.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            bad += [f"{file.name}: {n}" for n in names if n.startswith("imagebert.modeling")]
    assert bad == []
