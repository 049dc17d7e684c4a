"""The bf16-vs-fp32 page runs on tiny sizes, times both precisions in the same rounds and says what it found."""

from __future__ import annotations

from benchmarks.collect_results import check_results_text


def test_bf16_page_times_both_precisions_and_names_the_cpu():
    from benchmarks import bench_bf16_cpu, speed
    from imagebert.runtime.precision import cpu_runs_bf16_natively

    report = bench_bf16_cpu.measure(speed.tiny_sizes(batch=2), min_reps=2, max_reps=2, matmul_repeat=2)
    assert report["bf16_kernels"] == cpu_runs_bf16_natively()
    assert [r["what"].split()[0] for r in report["rows"]] == ["matmul", "training"]
    for row in report["rows"]:
        assert {k: v["reps"] for k, v in row["steps"].items()} == {"fp32": 2, "bf16": 2}
        assert all(v["cpu_s"] > 0 and v["wall_s"] > 0 for v in row["steps"].values())
        assert row["bf16_over_fp32"]["median"] > 0
    page = bench_bf16_cpu.to_markdown(report, ["--quick"])
    check_results_text("bf16_cpu.md", page)
    assert ("bf16 is emulated" in page) != report["bf16_kernels"]
    assert report["cpu"] in page and "| training step (MLM+ITM), batch 2 |" in page
