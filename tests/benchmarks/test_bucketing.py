"""The bucketing page measures padding on batches as the trainer builds them, and times both lists."""

from __future__ import annotations

from benchmarks.collect_results import check_results_text


def test_bucketing_page_measures_padding_and_times_both_lists(tmp_path):
    from benchmarks import bench_bucketing

    dataset = bench_bucketing.quick_dataset(tmp_path)
    report = bench_bucketing.measure(str(dataset), split="train", batch_size=4, steps=1, min_reps=2, max_reps=2,
                                     fixed_regions=12, store_images=6, store_dim=32)  # fmt: skip
    rows = {(r["scenario"], r["itm"]): r for r in report["padding"]}
    assert set(rows) == {(s, i) for s in ("as stored", "12 regions each") for i in ("demo", "paper")}
    for row in rows.values():
        assert 0 < row["random"]["share"] < 1 and 0 <= row["bucketed"]["share"] < 1
        assert row["random"]["batches"] == row["bucketed"]["batches"] == 48 // 4
    # fixed region counts and in-batch negatives: only caption lengths vary, and bucketing sorts them away
    fixed = rows[("12 regions each", "demo")]
    assert fixed["bucketed"]["share"] < 0.5 * fixed["random"]["share"]
    assert [(r["scenario"], r["itm"]) for r in report["steps"]] == [
        ("as stored", "demo"),
        ("12 regions each", "paper"),
    ]
    for row in report["steps"]:
        assert {k: v["reps"] for k, v in row["steps"].items()} == {"random": 2, "bucketed": 2}
        assert row["random_over_bucketed"]["median"] > 0
    for t in report["lengths_pass"].values():
        assert t["header"] > 0 and t["full_read"] > 0
    page = bench_bucketing.to_markdown(report, ["--quick"])
    check_results_text("bucketing.md", page)
    assert "| 12 regions each | demo |" in page and "full / header" in page
