"""A tiny fine-tuning run through the CLI: the loss falls, validation runs, the best checkpoint is kept and
evaluates as 'fine-tuned'; the config rejects unknown keys."""

import json
from pathlib import Path

import pytest
import torch

from imagebert.cli import main
from imagebert.config_utils import ConfigError
from imagebert.tasks.retrieval import load_finetune_config

from .conftest import write_karpathy_dataset

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "finetune"


def test_shipped_configs_load_and_match_the_paper():
    for name in ("flickr30k.yaml", "coco.yaml", "demo_cpu.yaml"):
        cfg = load_finetune_config(CONFIGS / name)
        assert cfg.loss.bce == 1.0 and cfg.loss.ce == 0.0 and cfg.loss.triplet == 0.0
    paper = load_finetune_config(CONFIGS / "coco.yaml")
    assert (paper.training.batch_size, paper.training.learning_rate, paper.training.epochs) == (24, 5e-5, 130)


def test_unknown_keys_are_rejected_by_name(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss:\n  bce: 1.0\n  focal: 2.0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="loss.focal"):
        load_finetune_config(bad)
    with pytest.raises(ConfigError, match="pool_size"):
        load_finetune_config(CONFIGS / "demo_cpu.yaml", ["negatives.pool_size=2"])


@pytest.mark.slow
def test_tiny_finetuning_lowers_the_loss_and_keeps_the_best(tmp_path, tiny_checkpoint):
    data = write_karpathy_dataset(tmp_path / "data", {"train": 24, "val": 8, "test": 6})
    out = tmp_path / "ft"
    args = [
        "finetune", str(CONFIGS / "demo_cpu.yaml"), "--out", str(out),
        "--set", f"dataset={data}", "--set", f"init_checkpoint={tiny_checkpoint}",
        "--set", "training.steps=16", "--set", "training.checkpoint_every=8", "--set", "training.log_every=1",
        "--set", "training.learning_rate=2e-3", "--set", "training.batch_size=8", "--set", "negatives.pool_size=6",
        "--set", "loss.ce=0.5", "--set", "loss.triplet=0.5", "--set", "loss.itc=0.2",
        "--set", "validation.num_queries=12", "--set", "validation.num_candidates=5",
    ]  # fmt: skip
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert {"loss_bce", "loss_ce", "loss_triplet", "loss_itc"} <= set(records[0])
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    vals = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert [v["step"] for v in vals] == [8, 16]  # the periodic checkpoint at 8, the final one at 16
    best = out / "best"
    assert (best / "model.safetensors").is_file() and (best / "retrieval.json").is_file()
    best_val = json.loads((best / "validation.json").read_text())
    assert best_val["val_rsum"] == max(v["val_rsum"] for v in vals)

    # the best checkpoint evaluates as fine-tuned, next to the paper's fine-tuned rows
    ev = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(best), "--dataset", str(data), "--split", "test",
                 "--protocol", "flickr1k", "--out", str(ev), "--precision", "fp32"]) == 0  # fmt: skip
    report = json.loads((ev / "results.json").read_text())
    assert report["setting"] == "fine-tuned"
    assert "UNITER (paper) | 71.5" in (ev / "results.md").read_text()


def test_finetuning_with_bf16_weights_validates_on_the_fp32_masters(tmp_path, tiny_checkpoint):
    from safetensors.torch import load_file

    data = write_karpathy_dataset(tmp_path / "data", {"train": 16, "val": 6, "test": 4})
    out = tmp_path / "ft"
    assert main([
        "finetune", str(CONFIGS / "demo_cpu.yaml"), "--out", str(out),
        "--set", f"dataset={data}", "--set", f"init_checkpoint={tiny_checkpoint}",
        "--set", "training.steps=4", "--set", "training.checkpoint_every=0", "--set", "training.batch_size=8",
        "--set", "training.precision=bf16", "--set", "training.weights=bf16", "--set", "negatives.pool_size=6",
        "--set", "validation.precision=fp32",  # fp32 inputs: only fp32 weights can take them
        "--set", "validation.num_queries=6", "--set", "validation.num_candidates=3",
    ]) == 0  # fmt: skip
    vals = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert [v["step"] for v in vals] == [4]
    assert all(w.dtype == torch.float32 for w in load_file(out / "final" / "model.safetensors").values())


def test_cli_errors_are_user_errors(tmp_path, capsys):
    assert (
        main(["evaluate", "--checkpoint", str(tmp_path / "nope"), "--dataset", str(tmp_path / "d.yaml")]) == 2
    )
    assert "not a checkpoint folder" in capsys.readouterr().err
    assert main(["finetune", str(CONFIGS / "demo_cpu.yaml"), "--set", "loss.bce=0"]) == 2
    assert "at least one" in capsys.readouterr().err
