"""Shared pieces: a tiny BERT on the real WordPiece vocabulary, the pre-training driver on in-memory data."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

DOCS = Path(__file__).resolve().parents[1] / "docs" / "experiments"


def machine(threads: bool = True) -> str:
    """The machine, as the result files name it (read when the results are written)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = f"{platform.machine()} CPU, {cores} cores"
    return f"{text}, {torch.get_num_threads()} torch thread(s)" if threads else text


def tiny_bert(folder: Path, hidden: int = 64, layers: int = 2) -> Path:
    """A randomly initialised small BERT with the shipped MiniLM tokenizer (so captions tokenise for real)."""
    from transformers import BertConfig, BertModel

    from imagebert.modeling import default_bert_path, load_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    load_tokenizer(default_bert_path()).save_pretrained(folder)
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=64)  # fmt: skip
    BertModel(cfg).save_pretrained(folder)
    return folder


def pretrain_in_memory(datasets: list[Any], out: Path, bert: Path, overrides: list[str]) -> list[dict]:
    """Run `run_pretraining` on in-memory datasets with a one-stage config; returns the metrics records."""
    from imagebert.tasks.pretraining import load_pretrain_config, run_pretraining

    out.mkdir(parents=True, exist_ok=True)
    yaml_path = out / "stage.yaml"
    yaml_path.write_text("stages:\n  - name: s\n    datasets: []\n", encoding="utf-8")
    cfg = load_pretrain_config(yaml_path, [f"init_from_bert={bert}", *overrides], check_paths=False)
    run_pretraining(cfg, out_dir=out / "run", dataset_factory=lambda stage: datasets)
    path = next((out / "run").rglob("metrics.jsonl"))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
