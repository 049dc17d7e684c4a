"""Progress on long commands: the shared helper, `imagebert evaluate`'s bar/summary, and the GPU check's smoke
mode. What can fail: no summary line, a summary with the wrong count, log lines on a non-TTY when none are due,
progress output on stdout (where the results go), the smoke mode not running on a CPU."""

from __future__ import annotations

import io
import re

import pytest

from imagebert.runtime.progress import Progress, format_seconds
from tests.retrieval.conftest import write_karpathy_dataset


def test_non_tty_writes_only_the_summary_by_default():
    buf = io.StringIO()
    with Progress("work", 10, unit="pairs", stream=buf, log_every=3600, enabled=True) as p:
        for _ in range(10):
            p.update(1)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1
    assert re.fullmatch(r"work: 10 pairs in \d+\.\d s \([\d,.]+ pairs/s\)", lines[0]), lines


def test_non_tty_logs_every_n_seconds_with_an_eta():
    buf = io.StringIO()
    p = Progress("work", 4, unit="items", stream=buf, log_every=0.0, enabled=True)
    p.update(1)
    p.update(1)
    p.close()
    p.close()  # idempotent
    lines = buf.getvalue().splitlines()
    assert (
        len(lines) == 3
        and "1/4 items" in lines[0]
        and "ETA" in lines[0]
        and lines[2].startswith("work: 2 items")
    )


def test_tty_draws_a_bar_and_disabled_is_silent():
    buf = io.StringIO()
    with Progress("bar", 3, unit="pairs", stream=buf, tty=True, enabled=True) as p:
        p.update(3)
    out = buf.getvalue()
    assert "3/3" in out and "bar: 3 pairs in" in out
    quiet = io.StringIO()
    with Progress("x", 3, stream=quiet, enabled=False) as p:
        p.update(3)
    assert quiet.getvalue() == "" and p.count == 3


def test_format_seconds():
    assert format_seconds(5.25) == "5.2 s" and format_seconds(125) == "2 min 05 s"
    assert format_seconds(7300) == "2 h 01 min"


def test_evaluate_prints_progress_and_a_summary(tmp_path, tiny_checkpoint, capsys):
    from imagebert.cli import main

    data = write_karpathy_dataset(tmp_path / "data", {"test": 6})
    args = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", str(data), "--split", "test",
            "--protocol", "flickr1k", "--precision", "fp32"]  # fmt: skip
    assert main([*args, "--mode", "both", "--k", "2", "--out", str(tmp_path / "ev")]) == 0
    captured = capsys.readouterr()
    err = captured.err
    # 6 images x 5 captions = 180 pairs exhaustively; fast mode's first stage embeds 30 texts + 6 images
    assert re.search(r"evaluate flickr1k-0 exhaustive: 180 pairs in [\d.]+ s \([\d,.]+ pairs/s\)", err), err
    assert re.search(r"evaluate flickr1k-0 first stage: 36 items in", err), err
    m = re.search(r"evaluate flickr1k-0 fast k=2: (\d+) pairs in", err)
    assert m and 0 < int(m.group(1)) < 180, err
    assert "pairs in" not in captured.out  # results on stdout, progress on stderr


def test_gpu_check_smoke_mode_runs_on_cpu(tmp_path):
    from benchmarks import collect_results, gpu_check

    out = tmp_path / "gpu.md"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--out", str(out)]) == 0
    text = out.read_text()
    assert "SMOKE MODE" in text and "samples/s" in text and "pairs/s" in text and "unknown" in text
    assert "Flickr30k 1k" in text and "COCO 5k" in text
    collect_results.check_results_text("gpu.md", text)


@pytest.mark.parametrize(("name", "tflops"), [("NVIDIA H200", 989.0), ("NVIDIA H100 PCIe", 756.0),
                                              ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L4", 121.0),
                                              ("NVIDIA L40S", 362.0), ("Some Card", None)])  # fmt: skip
def test_card_peak_table(name, tflops):
    from benchmarks.gpu_check import card_peak

    got = card_peak(name)
    assert got == (None if tflops is None else tflops * 1e12)


@pytest.mark.slow
def test_fast_mode_benchmark_runs_end_to_end(tmp_path, tiny_checkpoint):
    from benchmarks import bench_fast_mode, collect_results

    data = write_karpathy_dataset(tmp_path / "data", {"test": 6})
    out = tmp_path / "fast.md"
    rc = bench_fast_mode.main(["--checkpoint", str(tiny_checkpoint), "--dataset", str(data), "--k", "2",
                               "--reps", "1", "--out", str(out), "--extra", "--precision", "fp32"])  # fmt: skip
    assert rc == 0
    text = out.read_text()
    assert "| exhaustive | 1 | 180 |" in text and "| fast k=2 | 1 |" in text
    collect_results.check_results_text("fast_mode.md", text)
    assert "Rows meeting every target at once" in text


def test_fast_mode_targets_line_names_only_rows_that_meet_all_three():
    from benchmarks.bench_fast_mode import _targets_line

    def row(passes: float, wall: float, ir_lost: float, tr_lost: float) -> dict:
        return {"pass_ratio": passes, "speedup_wall": wall, "ir_r1_lost": ir_lost, "tr_r1_lost": tr_lost}

    rows = {"exhaustive": row(1, 1, 0, 0), "fast k=4": row(25, 10.5, 0.0, -0.2), "fast k=8": row(12, 8, 0, 0),
            "fast k=2": row(49, 14, 0.0, 2.0)}  # fmt: skip
    assert _targets_line(rows).endswith(": fast k=4.")
    assert _targets_line({"exhaustive": rows["exhaustive"], "fast k=8": rows["fast k=8"]}).endswith(": none.")
