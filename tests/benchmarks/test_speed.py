"""The speed benchmark's code runs end to end on tiny sizes and reports well-formed numbers.

No timing assertions: CI machines differ. What can fail: a missing key, a zero/NaN throughput, an API drift in
the peer (VisualBERT) or in our collator/masking/model, or the FLOP formula drifting from a hand count.
"""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import torch

from benchmarks import compare, speed


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory) -> tuple[dict, str]:
    """One `compare --quick` run (tiny sizes, both precisions, one timed step each) shared by the tests."""
    out = tmp_path_factory.mktemp("speed") / "report.json"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = compare.main(
            ["--quick", "--batch-size", "2", "--reps", "1", "--warmup", "0", "--json", str(out)]
        )
    assert rc == 0
    return json.loads(out.read_text()), buf.getvalue()


def _positive_finite(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_training_comparison_has_every_setting(quick_report):
    report, _ = quick_report
    for prec in ("fp32", "bf16"):
        block = report["training"][prec]
        assert _positive_finite(block["matmul_flops_per_s"])
        assert _positive_finite(block["step_shape_matmul_flops_per_s"]) and len(block["step_shape"]) == 3
        assert set(block["settings"]) == {"ours_all", "ours_mlm_itm", "visualbert"}
        for name, t in block["settings"].items():
            for key in ("samples_per_s", "model_samples_per_s", "flops_per_s", "utilisation", "flops"):
                assert _positive_finite(float(t[key])), (prec, name, key, t[key])
            assert t["collate_s"] >= 0 and t["step_s"] >= t["model_s"]
        # ours runs the real collator + masking; the peer gets prepared tensors
        assert block["settings"]["ours_all"]["collate_s"] > 0
        assert block["settings"]["visualbert"]["collate_s"] == 0
        # all four tasks cost more FLOPs than MLM+ITM on the same batch (the MOC/MRFR heads)
        assert block["settings"]["ours_all"]["flops"] > block["settings"]["ours_mlm_itm"]["flops"]


def test_retrieval_and_store_results(quick_report):
    report, _ = quick_report
    rates = report["retrieval"]["pairs_per_s"]
    assert set(rates) == {"fp32", "bf16"} and all(_positive_finite(r) for r in rates.values())
    speedups = report["retrieval"]["fast_speedup_flickr1k"]
    assert all(v > 1 for v in speedups.values())
    assert _positive_finite(report["store"]["samples_per_s"])


def test_compare_prints_the_table(quick_report):
    _, text = quick_report
    assert "| bf16 | ours_mlm_itm |" in text and "| fp32 | visualbert |" in text
    assert "utilisation" in text and "store headroom" in text


def test_flop_formula_matches_a_hand_count():
    s = speed.Sizes(layers=2, hidden=4, heads=1, intermediate=8, vocab=10, feature_dim=6, regions=3,
                    num_classes=5, batch=2)  # fmt: skip
    got = speed.train_step_flops(sizes=s, seq_len=7, batch=2, regions=3, mlm_positions=2, moc_positions=1,
                                 mrfr_positions=3)  # fmt: skip
    # per layer: Q,K,V,O (4 x 4*4) + FFN (4*8 + 8*4) = 64 + 64 = 128 weights; 2 layers; 14 tokens; x6
    assert got["encoder"] == 6 * 256 * 14 == 21504
    # QK^T and AV: 2 L^2 H each forward (4 L^2 H), x3 with backward, per layer (2) and sequence (2)
    assert got["attention"] == 4 * 49 * 4 * 3 * 2 * 2 == 9408
    assert got["region_proj"] == 4 * (6 * 4 + 5 * 4) * 6  # no input gradient for region features
    assert got["pooler_itm"] == 6 * (16 + 4) * 2
    assert got["mlm_head"] == 6 * (16 + 40) * 2
    assert got["moc_head"] == 6 * 20 * 1 and got["mrfr_head"] == 6 * 24 * 3
    assert got["total"] == sum(v for k, v in got.items() if k != "total")


def test_flop_formula_matches_the_models_linear_layers():
    """The encoder term's parameter count equals the real model's encoder Linear weights."""
    s = speed.tiny_sizes(batch=1)
    model = speed.build_ours(s)
    linear = sum(
        m.weight.numel() for m in model.imagebert.encoder.modules() if isinstance(m, torch.nn.Linear)
    )
    got = speed.train_step_flops(sizes=s, seq_len=1, batch=1, regions=0, mlm_positions=0)
    assert got["encoder"] == 6 * linear


def test_peer_gets_the_same_batch():
    s = speed.tiny_sizes(batch=3)
    builder = speed.BatchBuilder(s)
    inputs, seconds = builder(speed.make_pairs(3, s))
    peer = speed.peer_inputs(inputs)
    assert seconds > 0
    assert torch.equal(peer["visual_embeds"], inputs["mrfr_targets"])
    assert peer["labels"].shape[1] == inputs["input_ids"].shape[1] + s.regions
    assert torch.equal(peer["sentence_image_labels"], 1 - inputs["itm_labels"])
    loss = speed.build_peer(s)(**peer).loss
    assert torch.isfinite(loss)


def test_collator_benchmark(benchmark):
    """The data path our step times (collate + mask), under pytest-benchmark with a fixed, tiny round count."""
    s = speed.tiny_sizes(batch=4)
    builder = speed.BatchBuilder(s)
    pairs = speed.make_pairs(4, s)
    inputs, _ = benchmark.pedantic(builder, args=(pairs,), rounds=2, iterations=1)
    assert inputs["region_features"].shape == (4, s.regions, s.feature_dim)
    assert int((inputs["mlm_labels"] != -100).sum()) >= 4  # at least one masked token per caption


def test_profile_reports_op_groups():
    text = speed.profile_ours(speed.tiny_sizes(batch=2), "fp32", steps=1, row_limit=5)
    assert "| matmul (mm, addmm, bmm) |" in text and "aten::" in text
