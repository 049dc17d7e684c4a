"""The speed benchmark's code runs end to end on tiny sizes and its like-for-like setup holds.

No timing assertions: CI machines differ. What can fail: the two models scoring a different number of MLM
positions in a row that claims the same work, a missing key or a zero/NaN figure, the peer's API drifting, the
FLOP formula drifting from a hand count or from the model's real Linear layers, a results page without the
lines the collector requires.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks import collect_results, speed


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory) -> tuple[dict, str]:
    """One `speed --quick` run (tiny sizes, both precisions, two rounds) shared by the tests."""
    tmp = tmp_path_factory.mktemp("speed")
    before = torch.get_num_threads()
    try:
        rc = speed.main(["--quick", "--batch-size", "4", "--min-reps", "2", "--max-reps", "2", "--warmup", "0",
                         "--score-pairs", "8", "--json", str(tmp / "r.json"), "--out", str(tmp / "speed.md")])  # fmt: skip
    finally:
        torch.set_num_threads(before)
    assert rc == 0
    return json.loads((tmp / "r.json").read_text()), (tmp / "speed.md").read_text()


def _positive_finite(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_like_for_like_rows_score_the_same_positions(quick_report):
    report, _ = quick_report
    for prec in ("fp32", "bf16"):
        st = report["training"][prec]["settings"]
        assert set(st) == set(speed.SETTINGS)
        # masked: both heads run on exactly the masked text tokens of matched pairs, and there are some
        assert st["ours_masked"]["mlm_head_rows"] == st["visualbert_masked"]["mlm_head_rows"] > 0
        # every position: each head runs on batch x its own joint sequence
        for name in ("ours_allpos", "visualbert_allpos"):
            assert st[name]["mlm_head_rows"] == 4 * st[name]["seq_len"]
        assert st["ours_allpos"]["mlm_head_rows"] > st["ours_masked"]["mlm_head_rows"]
        assert st["ours_allpos"]["flops"] > st["ours_masked"]["flops"]


def test_timings_ratios_and_rates_are_well_formed(quick_report):
    report, _ = quick_report
    for prec in ("fp32", "bf16"):
        block = report["training"][prec]
        for t in block["settings"].values():
            assert t["reps"] == 2 and len(t["cpu_all"]) == 2 and len(t["wall_all"]) == 2
            for key in ("cpu_s", "wall_s", "samples_per_cpu_s", "gflop_per_cpu_s", "utilisation",
                        "utilisation_fwd_rate_only"):  # fmt: skip
                assert _positive_finite(float(t[key])), (prec, key, t[key])
        for key in ("forward_flops_per_s", "backward_flops_per_s", "dgrad_flops_per_s", "wgrad_flops_per_s"):
            assert _positive_finite(block["rates"][key])
        for r in block["ratios"].values():
            assert _positive_finite(r["median"]) and r["min"] <= r["median"] <= r["max"]


def test_scoring_goes_through_the_scorer(quick_report):
    report, _ = quick_report
    sc = report["scoring"]["settings"]
    assert set(sc) == set(speed.SCORER_SETTINGS)
    for name, t in sc.items():
        assert _positive_finite(t["pairs_per_cpu_s"]) and t["kwargs"] == speed.SCORER_SETTINGS[name]
    # bf16 settings change the numbers a little, never a lot (the score head stays fp32)
    assert 0 < sc["bf16_resident"]["max_abs_score_diff_vs_fp32"] < 0.1
    assert set(report["bucketing"]["settings"]) == {"unsorted", "length_sorted"}
    assert report["bucketing"]["settings"]["length_sorted"]["max_abs_score_diff_vs_unsorted"] < 0.05


def test_results_page_passes_the_collector(quick_report):
    _, page = quick_report
    assert "Command: `.venv/bin/python -m benchmarks.speed --quick" in page and "\nMachine: " in page
    assert "| bf16 | ours_masked |" in page and "| fp32 | visualbert_allpos |" in page
    assert "utilisation (fwd+bwd rates)" in page and "backward" in page
    collect_results.check_results_text("speed.md", page)


def test_flop_formula_matches_a_hand_count():
    s = speed.Sizes(layers=2, hidden=4, heads=1, intermediate=8, vocab=10, feature_dim=6, regions=3,
                    num_classes=5, batch=2)  # fmt: skip
    got = speed.train_step_flops(sizes=s, seq_len=7, batch=2, regions=3, mlm_positions=2, moc_positions=1,
                                 mrfr_positions=3)  # fmt: skip
    # per layer: Q,K,V,O (4 x 4*4) + FFN (4*8 + 8*4) = 64 + 64 = 128 weights; 2 layers; 14 tokens; x6
    assert got["encoder"] == 6 * 256 * 14 == 21504
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
    enc = speed.encoder_of(model).encoder
    linear = sum(m.weight.numel() for m in enc.modules() if isinstance(m, torch.nn.Linear))
    got = speed.train_step_flops(sizes=s, seq_len=1, batch=1, regions=0, mlm_positions=0)
    assert got["encoder"] == 6 * linear


def test_utilisation_uses_both_rates():
    rates = {"forward_flops_per_s": 3e9, "backward_flops_per_s": 1e9}
    u = speed.utilisation(9e9, 10.0, rates)
    # 3 GFLOP forward at 3 GFLOP/s = 1 s, 6 GFLOP backward at 1 GFLOP/s = 6 s: 7 s of a 10 s step
    assert u["utilisation"] == pytest.approx(0.7)
    assert u["utilisation_fwd_rate_only"] == pytest.approx(0.3)


def test_peer_gets_the_same_batch_and_tokens():
    s = speed.tiny_sizes(batch=4)
    builder = speed.BatchBuilder(s)
    inputs, seconds = builder(speed.make_pairs(4, s))
    peer = speed.peer_inputs_matched(inputs)
    assert seconds > 0
    assert torch.equal(peer["visual_embeds"], inputs["mrfr_targets"])
    t = inputs["input_ids"].shape[1]
    assert peer["labels"].shape[1] == t + s.regions
    assert torch.equal(peer["sentence_image_labels"], 1 - inputs["itm_labels"])
    # the peer predicts exactly our predicted tokens: masked text of matched pairs
    ours = (inputs["mlm_labels"] != -100) & (inputs["itm_labels"] == 1)[:, None]
    assert torch.equal(peer["labels"][:, :t] != -100, ours) and bool((peer["labels"][:, t:] == -100).all())
    assert torch.isfinite(speed.build_peer(s)(**peer).loss)


def test_profile_reports_op_groups():
    text = speed.profile_ours(speed.tiny_sizes(batch=2), "fp32", steps=1, row_limit=5)
    assert "| matmul (mm, addmm, bmm) |" in text and "aten::" in text
