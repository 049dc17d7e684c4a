"""Rebuild BENCHMARKS.md from the per-area result files in benchmarks/results/ (each written by its benchmark).

A results file must say how it was made: a `Command:` line naming a script in this repository and a `Machine:`
line. A file without them (a hand-written table) is refused, so every figure in BENCHMARKS.md traces to a run.

    .venv/bin/python -m benchmarks.collect_results          # writes BENCHMARKS.md
    .venv/bin/python -m benchmarks.collect_results --check  # only validates the results files
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ORDER = [
    "speed",
    "levers",
    "levers_demo_size",
    "bf16_cpu",
    "allocator",
    "bucketing",
    "resident_weights",
    "int8",
    "fast_mode",
    "gpu",
    "training",
    "retrieval",
    "data",
    "extraction",
    "lait",
    "serve",
]
HEADER = """# Benchmarks

Every figure below was produced by the command printed beside it, on the machine named with it, and this file is
written by `python -m benchmarks.collect_results` from `benchmarks/results/*.md` (each written by its script; the
collector refuses a results file without its `Command:` and `Machine:` lines). No test asserts a timing;
`tests/benchmarks/` runs the same code on tiny sizes so it cannot rot. The development machine is a shared 2-core
VM: speed ratios are measured interleaved with one intra-op thread in process CPU time, wall time beside it.
"""
NO_GPU = """No GPU figures yet: `bash benchmarks/gpu_check.sh` (BERT-base step and scoring in bf16, MFU, Flickr30k 1k /
COCO 5k projections; under 5 minutes) has not been run on a CUDA machine; it writes benchmarks/results/gpu.md."""

# the command that reproduces the file, in a code span or a fenced block: a benchmarks/ script or module, or
# an `imagebert` command
_SCRIPT = r"(?:benchmarks/[\w/-]+\.(?:py|sh)|-m\s+benchmarks\.\w+|imagebert\s+[a-z]+)"
_COMMAND = re.compile(r"`[^`\n]*" + _SCRIPT + r"[^`\n]*`|^```[^\n]*\n(?:(?!```).*\n)*?.*" + _SCRIPT, re.M)
_MACHINE = re.compile(r"(?:^|[.:] )(?:\*\*)?Machine(?:\*\*)?:(?:\*\*)?\s*\S", re.M)


class ResultsError(ValueError):
    """A results file that does not say how it was produced."""


def check_results_text(name: str, text: str) -> None:
    """Raise ResultsError unless `text` has a Command: line (a benchmarks/ script or an imagebert command, in
    backticks) and a Machine: line."""
    missing = []
    if not _COMMAND.search(text):
        missing.append(
            "command line (a benchmarks/ script or `imagebert` command, in backticks or a code block)"
        )
    if not _MACHINE.search(text):
        missing.append("a `Machine:` line")
    if missing:
        raise ResultsError(f"benchmarks/results/{name}: no {' and no '.join(missing)}; results files are written "
                           "by their benchmark script, never by hand")  # fmt: skip


def collect(root: Path) -> str:
    results = root / "results"
    names = [n for n in ORDER if (results / f"{n}.md").is_file()]
    names += sorted(p.stem for p in results.glob("*.md") if p.stem not in ORDER)
    parts = [HEADER] + ([] if (results / "gpu.md").is_file() else [NO_GPU])
    for name in names:
        text = (results / f"{name}.md").read_text(encoding="utf-8").strip()
        check_results_text(f"{name}.md", text)
        if text.startswith("# "):  # a page of its own: demote every heading one level
            text = "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())
        parts.append(text)
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="validate the results files, write nothing")
    ap.add_argument("--root", default=str(Path(__file__).resolve().parent), help="the benchmarks/ folder")
    ap.add_argument("--out", default=None, help="where to write (default: BENCHMARKS.md next to benchmarks/)")
    args = ap.parse_args(argv)
    root = Path(args.root)
    try:
        text = collect(root)
    except ResultsError as exc:
        print(f"collect_results: {exc}", file=sys.stderr)
        return 1
    if not args.check:
        out = Path(args.out) if args.out else root.parent / "BENCHMARKS.md"
        out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
