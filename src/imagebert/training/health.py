"""Learning health: notice a task whose loss stays at its chance level, and say so where the user looks.

A task declares its chance-level loss (`task.chance_losses`, e.g. ITM's constant-prediction BCE, ln 2 at half
negatives). The monitor keeps the last `window` per-step values of each; once the window is full and its mean is
still within `tolerance` (relative) of chance, it raises one warning for that task, which the trainer prints in
the progress output, logs, and writes to `health.json` beside `metrics.jsonl` (the demo report reads it).
"""

from __future__ import annotations

import collections
import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class ChanceWarning:
    task: str
    step: int  # the step at which the warning fired
    mean_loss: float  # over the window ending at `step`
    chance: float
    window: int
    last_step_at_chance: int  # updated while the task stays at chance

    def message(self) -> str:
        return (
            f"WARNING: {self.task} loss has stayed at chance for {self.window} steps (mean {self.mean_loss:.4f}, "
            f"chance {self.chance:.4f}, at step {self.step}): the model is not learning this task; "
            "see docs/training.md, 'Learning health'"
        )


class ChanceMonitor:
    def __init__(self, chance_losses: dict[str, float], window: int, tolerance: float) -> None:
        self.chance = dict(chance_losses) if window > 0 else {}
        self.window, self.tolerance = window, tolerance
        self.values: dict[str, collections.deque[float]] = {
            n: collections.deque(maxlen=max(window, 1)) for n in self.chance
        }
        self.warnings: dict[str, ChanceWarning] = {}

    def at_chance(self, task: str) -> float | None:
        """The window's mean loss when the window is full and at chance, else None."""
        vals = self.values[task]
        if len(vals) < self.window:
            return None
        mean = sum(vals) / len(vals)
        return mean if mean >= self.chance[task] * (1.0 - self.tolerance) else None

    def update(self, step: int, parts: dict[str, float]) -> list[ChanceWarning]:
        """Add one step's losses; returns the warnings that fired at this step."""
        fired = []
        for task in self.chance:
            if task not in parts:
                continue
            self.values[task].append(float(parts[task]))
            mean = self.at_chance(task)
            if mean is None:
                continue
            if task in self.warnings:
                self.warnings[task].last_step_at_chance = step
                continue
            w = ChanceWarning(task, step, mean, self.chance[task], self.window, step)
            self.warnings[task] = w
            fired.append(w)
        return fired

    def write(self, path: Path) -> None:
        data = {
            "chance_losses": self.chance,
            "window": self.window,
            "tolerance": self.tolerance,
            "warnings": [asdict(w) for w in self.warnings.values()],
        }
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
