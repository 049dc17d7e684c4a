"""Rebuild BENCHMARKS.md from the per-area result files in benchmarks/results/ (each written by its benchmark)."""

from __future__ import annotations

from pathlib import Path

ORDER = ["speed", "training", "retrieval", "data", "extraction", "lait", "serve"]
HEADER = """# Benchmarks

Every figure below was produced by the command printed beside it, on the machine named with it. No test asserts
a timing; `tests/benchmarks/` runs the same code on tiny sizes so it cannot rot. The development machines are
shared 2-core VMs: where the load average during a run is given, read absolute numbers with it in mind, and
prefer the ratios (always against a peer measured in the same run, interleaved).

Regenerate this file with `python -m benchmarks.collect_results` after re-running a benchmark.
"""


def main() -> None:
    root = Path(__file__).resolve().parent
    parts = [HEADER]
    for name in ORDER:
        path = root / "results" / f"{name}.md"
        if path.is_file():
            text = path.read_text(encoding="utf-8").strip()
            if text.startswith("# "):  # a page of its own: demote every heading one level
                text = "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())
            parts.append(text)
    (root.parent / "BENCHMARKS.md").write_text("\n\n".join(parts) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
