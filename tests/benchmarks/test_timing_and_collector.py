"""The timing helpers interleave and compute spreads correctly; the collector refuses hand-written results."""

from __future__ import annotations

import pytest

from benchmarks import collect_results, timing


def test_run_interleaved_alternates_and_respects_the_caps():
    calls: list[str] = []
    settings = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
    series = timing.run_interleaved(settings, warmup=1, min_reps=2, max_reps=3, target_spread=-1.0)
    # warm-up a, b, c once each, then rounds a, b, c ... up to max_reps (a negative target is never met)
    assert calls == ["a", "b", "c"] * 4
    assert all(len(s.cpu) == 3 and len(s.wall) == 3 for s in series.values())
    calls.clear()
    series = timing.run_interleaved(settings, warmup=0, min_reps=2, max_reps=5, target_spread=float("inf"))
    assert calls == ["a", "b", "c"] * 2  # target met at once: stops after min_reps


def test_spread_and_paired_ratio():
    assert timing.spread([1.0, 1.1, 0.9]) == pytest.approx(0.2)
    assert timing.spread([2.0]) == float("inf")
    a = timing.Series("a", cpu=[2.0, 4.0, 2.2], wall=[2.0, 4.0, 2.2])
    b = timing.Series("b", cpu=[1.0, 2.0, 1.0], wall=[1.0, 2.0, 1.0])
    r = timing.paired_ratio(a, b)
    # per round 2.0, 2.0, 2.2: the slow round 2 hit both sides and cancels
    assert r["median"] == pytest.approx(2.0) and r["max"] == pytest.approx(2.2)
    assert timing.fmt_spread(float("inf")) == "n/a" and timing.fmt_spread(0.012) == "1.2%"


GOOD = "## X\n\nCommand: `.venv/bin/python -m benchmarks.speed --reps 3`\n\nMachine: 2-core CPU VM\n\n| a |\n"


def test_collector_accepts_a_file_with_command_and_machine(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "speed.md").write_text(GOOD)
    (tmp_path / "results" / "extra.md").write_text(
        "## Y\n\nMachine: laptop.\n\n```bash\n.venv/bin/python benchmarks/bench_data.py --images 2\n```\n"
    )
    out = tmp_path / "B.md"
    assert collect_results.main(["--root", str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Benchmarks") and "## X" in text and "## Y" in text


@pytest.mark.parametrize(
    "text",
    [
        "## X\n\nMachine: 2-core CPU VM\n\n| ratio | 1.05x |\n",  # no command
        "## X\n\nCommand: `.venv/bin/python -m benchmarks.speed`\n\n| ratio | 1.05x |\n",  # no machine
        "## X\n\nCommand: run the thing\nMachine: a box\n\n| ratio | 1.05x |\n",  # command names no script
    ],
)
def test_collector_refuses_a_results_file_without_its_lines(tmp_path, text, capsys):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "speed.md").write_text(text)
    out = tmp_path / "B.md"
    assert collect_results.main(["--root", str(tmp_path), "--out", str(out)]) == 1
    assert not out.exists()
    assert "speed.md" in capsys.readouterr().err


def test_the_repositorys_results_files_pass():
    root = collect_results.Path(collect_results.__file__).resolve().parent
    collect_results.collect(root)  # raises ResultsError on a hand-written file


def test_machine_line_names_the_cpu_and_its_capability():
    """Hosts change between sessions and bf16 pays only on some CPUs, so every page says which CPU ran it."""
    from pathlib import Path

    import torch
    from benchmarks.timing import cpu_model, machine_line

    line = machine_line()
    assert line.startswith("Machine: ") and cpu_model() in line
    assert torch.backends.cpu.get_cpu_capability() in line
    if Path("/proc/cpuinfo").is_file():
        assert "family" in cpu_model() and "?" not in cpu_model().split("(")[0]


def test_cpu_model_names_the_amx_units_only_where_the_flags_have_them(tmp_path):
    """bf16 and int8 speeds depend on AMX, which the model name does not say: the flags decide what is printed."""
    from benchmarks.timing import cpu_model

    block = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\nmodel name\t: Xeon\n"
    amx = tmp_path / "amx"
    amx.write_text(block + "flags\t\t: fpu avx2 avx512f amx_bf16 amx_tile amx_int8\n\nprocessor\t: 1\n")
    avx2 = tmp_path / "avx2"
    avx2.write_text(block + "flags\t\t: fpu avx2 fma\n\n")
    assert cpu_model(str(amx)) == "Xeon (family 6, model 143, AMX-BF16 + AMX-INT8)"
    assert cpu_model(str(avx2)) == "Xeon (family 6, model 143)"
