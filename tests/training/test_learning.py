"""The recipe learns the alignment: ITM well above chance on detector-like features, and the health warning.

The corpus imitates what detectors ship: non-negative features with a large shared offset (norm ~15x the content
part), two object "topics" per image named by its captions. Run through the real pre-training driver.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from imagebert.training.pairs import PairPool

from .conftest import WORDS

DIM = 64
TOPICS = WORDS[1:12]


def detector_like_corpus(shuffle_captions: bool = False):
    from imagebert.demo.detector_features import detector_like_pairs

    return detector_like_pairs(TOPICS, dim=DIM, shuffle_captions=shuffle_captions)


def _config(tmp_path: Path, bert: Path, steps: int, extra: list[str]):
    from imagebert.tasks.pretraining import load_pretrain_config

    yaml_path = tmp_path / "p.yaml"
    yaml_path.write_text("stages:\n  - name: s\n    datasets: []\n", encoding="utf-8")
    overrides = [
        f"init_from_bert={bert}", f"stages.0.steps={steps}", "training.batch_size=16", "training.learning_rate=1e-3",
        "training.warmup_ratio=0.05", "training.log_every=10", "training.progress_bar=false",
        "training.tensorboard=false", "training.checkpoint_every=0", "model.max_regions=10",
        "model.max_text_tokens=16", "model.task_itc=true", *extra,
    ]  # fmt: skip
    return load_pretrain_config(yaml_path, overrides, check_paths=False)


@pytest.mark.slow
def test_itm_accuracy_rises_well_above_chance(tmp_path, tiny_bert):
    from imagebert.data.masking import MaskingConfig
    from imagebert.modeling import ImageBertForPreTraining, load_tokenizer
    from imagebert.tasks.pretraining import ItmConfig, PretrainTask, run_pretraining

    ds = detector_like_corpus()
    steps = 500
    cfg = _config(tmp_path, tiny_bert, steps, [])
    final = run_pretraining(cfg, out_dir=tmp_path / "run", dataset_factory=lambda stage: [ds])
    model = ImageBertForPreTraining.from_pretrained(final).eval()
    # widths and class count were read from the data (model.*: auto)
    assert model.config.visual_feature_dim == DIM
    assert model.config.num_object_classes == len(TOPICS)
    assert model.imagebert.region_feature_stats_set
    assert model.config.itc_trained_steps == steps
    task = PretrainTask(PairPool([ds]), load_tokenizer(final), model.config, MaskingConfig(), ItmConfig())
    gen = torch.Generator().manual_seed(123)
    correct = total = 0
    with torch.no_grad():
        for _ in range(16):
            items = [task.pool[int(i)] for i in torch.randint(len(ds), (16,), generator=gen)]
            batch = task.build_batch(items, gen)
            _, parts = task.compute_loss(model, batch)
            correct += float(parts["itm_acc"]) * 16
            total += 16
    accuracy = correct / total
    assert accuracy > 0.75, f"ITM accuracy {accuracy:.3f} on fresh pairs"
    records = [
        json.loads(line) for line in (tmp_path / "run" / "1-s" / "metrics.jsonl").read_text().splitlines()
    ]
    assert "itm_acc" in records[-1] and "loss_itm_acc" not in records[-1]
    health = json.loads((tmp_path / "run" / "1-s" / "health.json").read_text())
    # the plateau may trip the warning early on; it must have left chance well before the end
    assert all(w["last_step_at_chance"] <= 350 for w in health["warnings"]), health["warnings"]


def test_chance_warning_fires_when_labels_are_shuffled(tmp_path, tiny_bert, caplog):
    from imagebert.tasks.pretraining import run_pretraining

    ds = detector_like_corpus(shuffle_captions=True)
    cfg = _config(tmp_path, tiny_bert, 60, ["training.chance_warning_steps=30", "model.task_itc=false"])
    with caplog.at_level("WARNING"):
        run_pretraining(cfg, out_dir=tmp_path / "run", dataset_factory=lambda stage: [ds])
    health = json.loads((tmp_path / "run" / "1-s" / "health.json").read_text())
    [warning] = health["warnings"]
    assert warning["task"] == "itm" and warning["step"] == 30
    assert warning["chance"] == pytest.approx(np.log(2), rel=1e-6)
    assert any("itm loss has stayed at chance for 30 steps" in r.getMessage() for r in caplog.records)


def test_chance_monitor_window_and_recovery():
    from imagebert.training.health import ChanceMonitor

    mon = ChanceMonitor({"itm": 0.693}, window=3, tolerance=0.03)
    assert mon.update(1, {"itm": 0.69}) == [] and mon.update(2, {"itm": 0.70}) == []
    [fired] = mon.update(3, {"itm": 0.69})
    assert fired.step == 3 and fired.task == "itm"
    assert mon.update(4, {"itm": 0.2}) == []  # fires once; the mean (0.53) is no longer at chance
    assert mon.warnings["itm"].last_step_at_chance == 3
    assert ChanceMonitor({"itm": 0.693}, window=0, tolerance=0.03).update(1, {"itm": 0.69}) == []
