"""benchmarks/bench_allocator.py on tiny sizes: both settings run in their own children, every row (both training
steps and the scorer) is filled from real steps, and the page passes the collector."""

from __future__ import annotations

from benchmarks.collect_results import check_results_text

from benchmarks import bench_allocator


def test_allocator_benchmark_times_both_settings_in_children():
    report = bench_allocator.measure(rounds=1, steps=2, tiny=True, log=lambda _m: None)
    assert {r["setting"] for r in report["rows"].values()} == {"system", "tuned"}
    assert {r["step"] for r in report["rows"].values()} == {"ours_masked", "visualbert_masked", "scoring"}
    for row in report["rows"].values():
        assert row["steps"] == 2 and row["wall_s"] > 0 and row["cpu_s"] > 0 and row["max_rss_mib"] > 0
        assert row["applied"] == (row["setting"] == "tuned")
    page = bench_allocator.to_markdown(report, ["--tiny"])
    check_results_text("allocator.md", page)
    assert "Tuning in effect in every tuned child: yes." in page
