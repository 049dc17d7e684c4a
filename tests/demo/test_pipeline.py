"""The demo's wiring end to end on a tiny corpus: corpus -> extract -> pretrain -> evaluate -> finetune -> report."""

from __future__ import annotations

import json

import pytest

from imagebert.demo.pipeline import DemoSettings, _chance_recall, run_demo


@pytest.mark.slow
def test_demo_pipeline_runs_end_to_end_on_a_tiny_corpus(tmp_path, tiny_bert_path):
    settings = DemoSettings(
        num_train=12,
        num_val=4,
        num_test=4,
        image_size=96,
        extract_size=96,
        pretrain_steps=3,
        pretrain_batch=4,
        finetune_steps=3,
        finetune_batch=2,
        examples=1,
        fast_ks=(2,),
        detector_pretrain_steps=2,
        detector_finetune_steps=2,
    )
    report = run_demo(tmp_path / "demo", settings, bert_path=tiny_bert_path, log=lambda _: None)
    text = report.read_text()
    assert "| chance |" in text and "fine-tuned" in text
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert len(summary) == 5  # chance, words, zero-shot, fine-tuned, and fine-tuned on detector-like features
    assert "detector-like features: fine-tuned" in summary
    assert "## Learning health (pre-training)" in text and "| EfficientNet features |" in text
    assert "| fast k=2 |" in text  # fast mode measured beside exhaustive on the fine-tuned checkpoint
    from imagebert.data.store import FeatureStore

    det_store = FeatureStore(tmp_path / "demo" / "detector" / "features")
    assert det_store.feature_dim == 2048 and len(det_store) == 20
    assert (det_store[det_store.ids()[0]].features >= 0).all()
    for row in summary.values():
        assert set(row) == {"ir_r1", "ir_r5", "ir_r10", "tr_r1", "tr_r5", "tr_r10"}
        assert all(0.0 <= v <= 100.0 for v in row.values())
    figures = tmp_path / "demo" / "figures"
    assert (figures / "losses.png").stat().st_size > 0
    assert (figures / "recall.png").stat().st_size > 0
    assert (figures / "example_0.png").stat().st_size > 0
    assert (tmp_path / "demo" / "finetune" / "best" / "model.safetensors").is_file()


def test_chance_recall_matches_hand_computation():
    chance = _chance_recall(100, 5.0)
    assert chance["ir_r1"] == pytest.approx(1.0)
    assert chance["ir_r10"] == pytest.approx(10.0)
    # text retrieval: 1 - P(none of the 5 right captions among the top 1 of 500) = 5/500
    assert chance["tr_r1"] == pytest.approx(1.0)
    miss = 1.0
    for j in range(5):
        miss *= (495 - j) / (500 - j)
    assert chance["tr_r5"] == pytest.approx(100 * (1 - miss))


@pytest.mark.parametrize("native", [False, True])
def test_auto_precisions_follow_the_cpu_and_explicit_ones_stay(monkeypatch, tmp_path, native):
    """On an AVX2-only CPU bf16 is emulated (many times slower than fp32), so the demo's "auto" trains,
    evaluates and extracts in fp32 there; a precision the user names is kept either way."""
    from imagebert.demo.pipeline import demo_pretrain_config, resolve_machine_settings
    from imagebert.runtime import precision

    monkeypatch.setattr(precision, "cpu_runs_bf16_natively", lambda: native)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    chosen, note = resolve_machine_settings(DemoSettings())
    want = "bf16" if native else "fp32"
    assert (chosen.train_precision, chosen.eval_precision, chosen.extract_bf16) == (want, want, native)
    assert ("emulated" in note) != native and f"training {want}" in note
    pinned = DemoSettings(train_precision="bf16", eval_precision="fp32", extract_bf16=False)
    assert resolve_machine_settings(pinned) == (pinned, "precisions as set")
    dataset_yaml = tmp_path / "dataset.yaml"
    dataset_yaml.write_text("feature_store: x\ncaptions: []\n")
    cfg = demo_pretrain_config(dataset_yaml, DemoSettings(), None)
    assert cfg.training.precision == want  # the trainer only ever sees an explicit name
