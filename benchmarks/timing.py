"""Interleaved A/B timing with process CPU time and wall time, and the machine line every result file carries.

Why this shape: on a shared 2-core VM, wall time of a multi-threaded step swings 5x with other people's load,
while one intra-op thread's process CPU time stays within about 1%. So every setting is timed A, B, C, A, B, C,
..., each repetition records both clocks, repetitions continue until the CPU-time spread of every setting is under
the target (or a cap is reached), and ratios are taken per round (A_r / B_r) so that a slow round hits both sides.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

MACHINE_DESCRIPTION = "2-core CPU VM, 24 GiB, no GPU"


def one_thread(allocator: str = "tuned") -> None:
    """The measuring convention of every benchmark here: one intra-op thread, and the CPU allocator setting the
    trainer and `imagebert evaluate` use by default ("tuned"), so that a step is timed as users run it and without
    the page-fault noise of glibc's defaults (benchmarks/results/allocator.md). Both models of a comparison share
    the process, so the setting applies to both alike."""
    from imagebert.runtime.allocator import tune_cpu_allocator

    tune_cpu_allocator(allocator)
    torch.set_num_threads(1)


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name, family and model numbers from /proc/cpuinfo, and its AMX units where it has them
    (what decides the bf16 and int8 kernels)."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
                if not line.strip():
                    break  # the first processor's block is enough
    except OSError:
        return platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    units = [name for flag, name in (("amx_bf16", "AMX-BF16"), ("amx_int8", "AMX-INT8")) if flag in flags]
    extra = f", {' + '.join(units)}" if units else ""
    return (
        f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')}"
        f"{extra})"
    )


def machine_line(allocator: str | None = None) -> str:
    """The `Machine:` line a results file must carry (the collector refuses a file without one); `allocator`
    overrides the malloc setting it reports (for a page whose rows run in processes of their own). It names the
    CPU: hosts change between sessions, and whether bf16 pays depends on the CPU (results/bf16_cpu.md)."""
    from imagebert.runtime.allocator import allocator_in_effect

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    desc = MACHINE_DESCRIPTION if gpu == "no GPU" else f"{os.cpu_count()}-CPU machine, {gpu}"
    return (
        f"Machine: {desc} ({cpu_model()}, {platform.machine()}, {torch.backends.cpu.get_cpu_capability()}, "
        f"torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op thread(s), {os.cpu_count()} CPUs, "
        f"malloc {allocator or allocator_in_effect()}, load average {os.getloadavg()[0]:.1f})"
    )


def command_line(module: str, argv: list[str] | None = None) -> str:
    """The `Command:` line of a results file: how to reproduce it."""
    args = sys.argv[1:] if argv is None else argv
    return "Command: `" + " ".join([".venv/bin/python", "-m", module, *args]) + "`"


def cpu_seconds() -> float:
    """Process CPU time (user + system, all threads), from getrusage (the same clock as time.process_time)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn: Callable[[], Any], *, with_children: bool = False) -> tuple[float, float, Any]:
    """(process CPU seconds, wall seconds, result) of one call. `with_children` adds the CPU time of child processes
    that ended during the call (inductor's C++ compiler runs as one: a compiling setting would look cheap without
    it)."""

    def children() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime if with_children else 0.0

    c0, k0, w0 = time.process_time(), children(), time.perf_counter()
    out = fn()
    return time.process_time() - c0 + children() - k0, time.perf_counter() - w0, out


def spread(values: list[float]) -> float:
    """(max - min) / median: the whole range of the repetitions, relative."""
    if len(values) < 2:
        return float("inf")
    med = statistics.median(values)
    return (max(values) - min(values)) / med if med > 0 else float("inf")


@dataclass
class Series:
    """The repetitions of one setting, and whatever its step reported (FLOPs, scored positions)."""

    name: str
    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_s(self) -> float:
        return float(statistics.median(self.cpu))

    @property
    def wall_s(self) -> float:
        return float(statistics.median(self.wall))

    def summary(self) -> dict[str, Any]:
        return {
            "reps": len(self.cpu),
            "cpu_s": self.cpu_s,
            "wall_s": self.wall_s,
            "cpu_spread": spread(self.cpu),
            "wall_spread": spread(self.wall),
            "cpu_all": list(self.cpu),
            "wall_all": list(self.wall),
            **self.info,
        }


def run_interleaved(
    settings: dict[str, Callable[[], dict[str, Any] | None]],
    *,
    warmup: int = 1,
    min_reps: int = 3,
    max_reps: int = 8,
    target_spread: float = 0.05,
    log: Callable[[str], None] | None = None,
) -> dict[str, Series]:
    """Warm every setting up in `warmup` untimed rounds (in the timed rounds' order), then time them round-robin
    until every CPU-time spread is under `target_spread` (after at least `min_reps` rounds) or `max_reps` rounds
    are done. A step may return a dict of facts about its work (kept from its last repetition).

    Why several warm-up rounds: a fresh model's first training steps grow the heap (optimizer state, gradients)
    and page-fault it in; on the dev VM our BERT-base step's second and third steps still spent 1.3 and 0.1 s of
    system time on that, against about 0 from the fourth on, and one such step alone put a 37-100% spread on
    its row."""
    for _ in range(warmup):
        for fn in settings.values():
            fn()
    series = {name: Series(name) for name in settings}
    for rnd in range(max_reps):
        for name, fn in settings.items():
            c, w, info = timed(fn)
            s = series[name]
            s.cpu.append(c)
            s.wall.append(w)
            if isinstance(info, dict):
                s.info.update(info)
        if log is not None:
            log(f"round {rnd + 1}: " + ", ".join(f"{n} {s.cpu[-1]:.2f}s" for n, s in series.items()))
        if rnd + 1 >= min_reps and all(spread(s.cpu) < target_spread for s in series.values()):
            break
    return series


def paired_ratio(num: Series, den: Series, clock: str = "cpu") -> dict[str, float]:
    """num/den time ratio per round (same round = same load), its median and spread. A ratio > 1 means the
    `num` setting takes longer, i.e. `den` is that many times faster."""
    a, b = getattr(num, clock), getattr(den, clock)
    ratios = [x / y for x, y in zip(a, b, strict=False)]
    return {"median": float(statistics.median(ratios)), "spread": spread(ratios), "min": min(ratios),
            "max": max(ratios)}  # fmt: skip


def fmt_spread(x: float) -> str:
    return "n/a" if x == float("inf") else f"{100 * x:.1f}%"


def add_demo_checkpoint_arguments(ap: Any) -> None:
    """--checkpoint/--dataset/--split of the scripts that time a trained model: by default `make demo`'s
    fine-tuned checkpoint and dataset, relative to the working directory (run from the repository root)."""
    ap.add_argument("--checkpoint", default="demo_out/finetune/best")
    ap.add_argument("--dataset", default="demo_out/dataset.yaml")
    ap.add_argument("--split", default="test")


def write_outputs(page: str, report: Any, out: str | None, json_path: str | None) -> None:
    """Print the results page, and write it and the raw report where asked: the one output path every
    benchmark script shares, so a results file is always exactly what was printed."""
    import json
    from pathlib import Path

    def write(path: str, text: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)  # benchmarks/out is not in a fresh clone
        Path(path).write_text(text, encoding="utf-8")

    print(page)
    if out:
        write(out, page)
    if json_path:
        write(json_path, json.dumps(report, indent=1, default=str))  # str: paths, dtypes in a report
