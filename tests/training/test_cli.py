"""`imagebert pretrain`: a real single-process run, resume through the CLI, and errors before the first step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagebert.cli import main
from imagebert.tasks.pretraining import load_pretrain_config

from .conftest import make_corpus, write_dataset, write_pretrain_yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def setup(tiny_bert, tmp_path):
    caps, recs = make_corpus()
    spec = write_dataset(tmp_path / "ds", caps, recs)
    return write_pretrain_yaml(tmp_path / "pretrain.yaml", tiny_bert, [spec], steps=4), tmp_path


def test_cli_trains_and_resumes_from_a_run_folder(setup, capsys):
    cfg, tmp = setup
    assert main(["pretrain", str(cfg), "--out", str(tmp / "run")]) == 0
    final = tmp / "run" / "1-s1" / "final"
    assert f"final checkpoint: {final}" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp / "run" / "1-s1").glob("checkpoint-*")) == ["checkpoint-00000002"]
    assert not list((tmp / "run" / "1-s1").glob(".tmp-*"))  # atomic writes leave no temp folders
    for name in ("model.safetensors", "config.json", "trainer_state.pt", "rng_states.pt", "meta.json",
                 "run_config.yaml", "tokenizer.json"):  # fmt: skip
        assert (final / name).is_file(), name
    # resuming a finished run is a no-op that returns the same final checkpoint
    assert main(["pretrain", str(cfg), "--out", str(tmp / "run"), "--resume", str(tmp / "run")]) == 0
    assert f"final checkpoint: {final}" in capsys.readouterr().out
    # --set reaches the stages; more steps from the step-2 checkpoint continue that run
    ck = tmp / "run" / "1-s1" / "checkpoint-00000002"
    assert main(["pretrain", str(cfg), "--out", str(tmp / "run2"), "--resume", str(ck)]) == 0
    steps = [
        json.loads(x)["step"] for x in (tmp / "run2" / "1-s1" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [3, 4]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.bogus=1", "unknown config key 'training.bogus'"),
        ("model.hiden_size=3", "unknown config key 'model.hiden_size'"),
        ("stages.0.datasets=[/no/such.yaml]", "stages[0].datasets[0]: file not found"),
        ("init_from_bert=/no/such/bert", "init_from_bert: /no/such/bert is not a checkpoint folder"),
        ("model.visual_feature_dim=32", "model.visual_feature_dim is 32 but the feature store"),
        ("stages.0.steps=null", "set exactly one of"),
        ("training.precision=fp8", "training.precision"),
    ],
)
def test_cli_errors_name_the_key_before_training(setup, capsys, override, message):
    cfg, tmp = setup
    assert main(["pretrain", str(cfg), "--out", str(tmp / "bad"), "--set", override]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp / "bad" / "1-s1" / "metrics.jsonl").exists()


def test_shipped_configs_load():
    paper = load_pretrain_config(ROOT / "configs/pretrain/paper_two_stage.yaml", check_paths=False)
    assert [s.name for s in paper.stages] == ["lait", "cc_sbu"]
    assert all(s.epochs == 17 for s in paper.stages)
    assert (paper.training.batch_size, paper.training.learning_rate) == (48, 1e-4)
    assert (paper.model["max_regions"], paper.model["visual_feature_dim"]) == (100, 2048)
    assert paper.stages[1].datasets[0].endswith("configs/datasets/conceptual_captions.yaml")
    # the paper sums its four losses with weight 1; the library (and so the CPU recipe) weighs ITM 4
    weights = ("mlm_weight", "moc_weight", "mrfr_weight", "itm_weight")
    assert [getattr(paper.tasks, w) for w in weights] == [1.0, 1.0, 1.0, 1.0] and paper.tasks.itc is False
    demo = load_pretrain_config(
        ROOT / "configs/pretrain/demo_cpu.yaml", ["stages.0.datasets=[x.yaml]"], check_paths=False
    )
    assert demo.model["visual_feature_dim"] == "auto" and demo.init_from_bert is None
    assert demo.tasks.itc is True and "task_itc" not in demo.model
    assert demo.tasks.itm_weight == 4.0
