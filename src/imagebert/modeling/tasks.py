"""Which pre-training losses `ImageBertForPreTraining` computes and how it sums them.

These are training choices, not architecture: they live in the pre-training config (`tasks:` in the YAML) and
are handed to the model as `model.tasks`, so a checkpoint's config.json describes only the network. The old
model-config keys (`task_mlm`, `loss_weight_itc`, `validate_inputs`, ...) are accepted for one release with a
warning.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

from imagebert.config_utils import ConfigError  # a ValueError; the CLI reports it as a config error

TASK_NAMES = ("mlm", "moc", "mrfr", "itm", "itc")

# old ImageBertConfig key -> field of PretrainingTasks ("validate_inputs" maps to the model attribute of that
# name)
LEGACY_TRAINING_SWITCHES: dict[str, str] = {
    **{f"task_{t}": t for t in TASK_NAMES},
    **{f"loss_weight_{t}": f"{t}_weight" for t in TASK_NAMES},
    "validate_inputs": "validate_inputs",
}

_warned: set[str] = set()


def warn_legacy_switches(keys: Any, where: str) -> None:
    """One DeprecationWarning per old key per process (a multi-stage run would otherwise repeat it per
    stage)."""
    fresh = sorted(k for k in keys if k not in _warned)
    if not fresh:
        return
    _warned.update(fresh)
    new = ", ".join(f"{k} -> {_new_name(k)}" for k in fresh)
    warnings.warn(
        f"{where}: training switches in the model config are deprecated and will be removed in the next "
        f"release; set them in the pre-training config instead ({new})",
        DeprecationWarning,
        stacklevel=3,
    )


def _new_name(key: str) -> str:
    target = LEGACY_TRAINING_SWITCHES[key]
    return target if target == "validate_inputs" else f"tasks.{target}"


@dataclass
class PretrainingTasks:
    """Which pre-training losses run and their weights in the sum. The paper sums MLM, MOC, MRFR and ITM with
    weight 1; here ITM weighs 4 by default: at 1 its BCE (at most ln 2) is a small share of a sum dominated by
    MLM and MOC, and it sat at chance for a third of a short run (docs/training.md, "Why ITM did not learn").
    `itm_weight: 1.0` is the paper's choice (configs/pretrain/paper_two_stage.yaml). ITC (beyond the paper)
    trains fast retrieval's first stage and is off by default."""

    mlm: bool = True
    moc: bool = True
    mrfr: bool = True
    itm: bool = True
    itc: bool = False
    mlm_weight: float = 1.0
    moc_weight: float = 1.0
    mrfr_weight: float = 1.0
    itm_weight: float = 4.0  # the paper: 1.0
    itc_weight: float = 1.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Weights are numbers >= 0 (stored as floats); ConfigError naming the key."""
        for name in TASK_NAMES:
            weight = getattr(self, f"{name}_weight")
            if not isinstance(weight, int | float) or isinstance(weight, bool) or weight < 0:
                raise ConfigError(f"tasks.{name}_weight must be a number >= 0, got {weight!r}")
            setattr(self, f"{name}_weight", float(weight))

    def enabled(self, name: str) -> bool:
        return bool(getattr(self, name))

    def weight(self, name: str) -> float:
        return float(getattr(self, f"{name}_weight"))

    def with_legacy(self, legacy: dict[str, Any]) -> PretrainingTasks:
        """A copy with old-style keys (`task_itc`, `loss_weight_mlm`) applied; `validate_inputs` is ignored
        here."""
        changes = {LEGACY_TRAINING_SWITCHES[k]: v for k, v in legacy.items() if k != "validate_inputs"}
        return dataclasses.replace(self, **changes)
