"""Shared fixtures: the real shipped MiniLM checkpoint and its tokenizer, and a tiny BERT folder for speed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    from imagebert.modeling import default_bert_path

    return default_bert_path()


@pytest.fixture(scope="session")
def tokenizer(minilm_path):
    from imagebert.modeling import load_tokenizer

    return load_tokenizer(minilm_path)


@pytest.fixture(scope="session")
def tiny_bert_path(tmp_path_factory, minilm_path) -> Path:
    """A real-format BERT folder (config + safetensors + the real vocab) with 2 layers of width 32."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (minilm_path / name).is_file():
            shutil.copy(minilm_path / name, folder / name)
    assert json.loads((folder / "config.json").read_text())["hidden_size"] == 32
    return folder
