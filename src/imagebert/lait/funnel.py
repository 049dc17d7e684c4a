"""Funnel accounting: every record that enters a step is either kept or dropped with a named reason.

Shards produce a Funnel each; they merge by addition, so the report of a distributed run equals the local one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

STEPS = ("pages", "images", "text_candidates", "text", "scoring", "aggregation")
# Steps whose records are pages (one page, one pair): every drop there is a line of rejects.jsonl.
# text_candidates counts candidate descriptions of a page that may still be kept, so it is not a page reject.
PAGE_STEPS = ("pages", "images", "text", "scoring", "aggregation")


@dataclass
class Funnel:
    examples_per_reason: int = 3
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejects: list[dict[str, Any]] = field(
        default_factory=list
    )  # every dropped page: url, step, reason, detail

    def _step(self, step: str) -> dict[str, Any]:
        return self.steps.setdefault(step, {"in": 0, "kept": 0, "dropped": {}, "examples": {}})

    def kept(self, step: str, n: int = 1) -> None:
        s = self._step(step)
        s["in"] += n
        s["kept"] += n

    def drop(self, step: str, reason: str, example: Any = None) -> None:
        s = self._step(step)
        s["in"] += 1
        s["dropped"][reason] = s["dropped"].get(reason, 0) + 1
        if example is not None:
            ex = s["examples"].setdefault(reason, [])
            if len(ex) < self.examples_per_reason:
                ex.append(example)
        if step in PAGE_STEPS:
            ex = dict(example) if isinstance(example, dict) else {"detail": example}
            url = ex.pop("url", None) or ex.pop("page_url", None) or ""
            self.rejects.append({"url": url, "step": step, "reason": reason, "detail": ex})

    def merge(self, other: Funnel) -> None:
        for name, o in other.steps.items():
            s = self._step(name)
            s["in"] += o["in"]
            s["kept"] += o["kept"]
            for r, n in o["dropped"].items():
                s["dropped"][r] = s["dropped"].get(r, 0) + n
            for r, ex in o["examples"].items():
                mine = s["examples"].setdefault(r, [])
                mine.extend(ex[: max(0, self.examples_per_reason - len(mine))])

    def to_dict(self) -> dict[str, Any]:
        ordered = {k: self.steps[k] for k in STEPS if k in self.steps}
        ordered.update({k: v for k, v in self.steps.items() if k not in ordered})
        return {"steps": ordered}

    @classmethod
    def from_dict(cls, data: dict[str, Any], examples_per_reason: int = 3) -> Funnel:
        return cls(examples_per_reason=examples_per_reason, steps=json.loads(json.dumps(data["steps"])))

    def counts(self) -> dict[str, dict[str, Any]]:
        """Counts only (no examples): what tests and benchmarks compare."""
        return {
            k: {"in": v["in"], "kept": v["kept"], "dropped": dict(sorted(v["dropped"].items()))}
            for k, v in self.to_dict()["steps"].items()
        }

    def to_markdown(self) -> str:
        lines = [
            "# LAIT funnel report",
            "",
            "| step | in | kept | dropped | reasons |",
            "|---|---:|---:|---:|---|",
        ]
        for name, s in self.to_dict()["steps"].items():
            reasons = ", ".join(f"{r}: {n}" for r, n in sorted(s["dropped"].items())) or "-"
            lines.append(f"| {name} | {s['in']} | {s['kept']} | {s['in'] - s['kept']} | {reasons} |")
        lines += ["", "## Examples of each reject reason", ""]
        for name, s in self.to_dict()["steps"].items():
            for reason, ex in sorted(s["examples"].items()):
                lines.append(f"- **{name} / {reason}**")
                for e in ex:
                    lines.append(f"  - `{json.dumps(e, ensure_ascii=False)[:300]}`")
        return "\n".join(lines) + "\n"
