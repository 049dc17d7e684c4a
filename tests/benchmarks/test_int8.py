"""The int8 page: all three parts run, on a real (tiny) checkpoint and dataset, and the collector accepts it.

What can fail: a product shape or kernel row missing, the int8 scorer silently scoring with the fp32 model (its
scores would equal the defaults'), the static setting's compile missing from its set-up, part C not evaluating
every setting or dropping their recall, the page
lacking its Command:/Machine: lines.
"""

from __future__ import annotations

import json

from benchmarks.collect_results import check_results_text

from tests.retrieval.conftest import write_karpathy_dataset


def test_int8_page_times_products_scorer_and_checkpoint(tmp_path, tiny_checkpoint):
    from benchmarks import bench_int8

    dataset = write_karpathy_dataset(tmp_path / "data", {"test": 4})
    out, js = tmp_path / "int8.md", tmp_path / "int8.json"
    argv = ["--tiny", "--rows", "32", "--gflop-per-rep", "0.02", "--min-reps", "2", "--max-reps", "2", "--demo-reps", "1",
            "--checkpoint", str(tiny_checkpoint), "--dataset", str(dataset), "--out", str(out), "--json", str(js)]  # fmt: skip
    assert bench_int8.main(argv) == 0
    page, report = out.read_text(), json.loads(js.read_text())
    check_results_text("int8.md", page)

    shapes = report["matmul"]["shapes"]
    assert len(shapes) == 3  # H->H, H->I, I->H
    for shape in shapes.values():
        int8 = [k for k in shape if k.startswith("int8 dynamic Linear (")]
        assert set(shape) == {"fp32 F.linear", "torch._int_mm", *int8} and int8  # one row per engine timed
        assert all(row["gflop_per_cpu_s"] > 0 and row["reps"] == 2 for row in shape.values())
        assert all(shape[k]["rate_vs_fp32"]["median"] > 0 for k in int8)

    scoring = report["scoring"]["settings"]
    static = ("int8-static weights", "int8-static weights, static shapes")
    assert list(scoring) == ["defaults", "int8 weights", *static]
    for name in ("int8 weights", *static):
        assert scoring[name]["max_abs_score_diff_vs_defaults"] > 0  # it really ran the int8 copy
    # set-up timed for every setting, and the calibrated ones' include their compile
    assert all(row["setup_wall_s"] > 0 for row in scoring.values())
    assert all(scoring[name]["setup_wall_s"] > scoring["defaults"]["setup_wall_s"] for name in static)

    demo = report["demo"]
    assert demo["captions"] == 20 and demo["images"] == 4
    for name in (
        "defaults",
        "int8 weights",
        "int8-static weights",
        "int8-static weights, compile cache warm",
        "int8-static weights, static shapes",
        "int8-static weights, static shapes, compile cache warm",
    ):
        row = demo["rows"][name]
        assert len(row["cpu"]) == 1 and 0 <= row["ir"]["R@1"] <= row["ir"]["R@10"] <= 100
        assert f"| {name} |" in page.split("## C.")[1]
