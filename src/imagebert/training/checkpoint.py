"""Atomic, self-describing checkpoints: a folder per save, written under a temporary name and renamed into place.

Layout of `checkpoint-00001000/`:
    config.json, model.safetensors     model.save_pretrained (safetensors)
    trainer_state.pt                   optimizer, scheduler, grad scaler, step, data position (torch.save)
    rng_states.pt                      python / numpy / torch (+cuda) RNG states, one entry per rank
    meta.json                          step, stage, epoch, batch_in_epoch, world size, git revision, time
    run_config.yaml                    the full run config
Everything is read back with `torch.load(weights_only=True)`: only tensors and plain containers are stored.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

TRAINER_STATE = "trainer_state.pt"
RNG_STATES = "rng_states.pt"
META = "meta.json"
RUN_CONFIG = "run_config.yaml"
PREFIX = "checkpoint-"


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors/ints only (loadable with weights_only=True)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python_version": int(version),
        "python_state": torch.tensor(internal, dtype=torch.int64),
        "python_gauss": None if gauss is None else float(gauss),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss),
        "numpy_cached": float(cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(
        (
            state["python_version"],
            tuple(int(x) for x in state["python_state"].tolist()),
            state["python_gauss"],
        )
    )
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_cached"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def git_revision() -> str | None:
    """The source tree's commit (with '-dirty' when modified), or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


@contextlib.contextmanager
def _quiet_hf_progress() -> Iterator[None]:
    """save_pretrained draws its own progress bar per shard; it would break the training bar's line."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def write_checkpoint(
    out_dir: Path,
    name: str,
    *,
    model: Any,
    trainer_state: dict[str, Any],
    rng_states: list[dict[str, Any]],
    meta: dict[str, Any],
    run_config_yaml: str | None,
    extra_save: Any = None,
) -> Path:
    """Write everything into `out_dir/.tmp-<name>-<pid>` and rename it to `out_dir/<name>` (replacing an old one)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / name
    tmp = out_dir / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    with _quiet_hf_progress():
        model.save_pretrained(tmp)
    if extra_save is not None:
        extra_save(tmp)
    torch.save(trainer_state, tmp / TRAINER_STATE)
    torch.save(rng_states, tmp / RNG_STATES)
    if run_config_yaml is not None:
        (tmp / RUN_CONFIG).write_text(run_config_yaml, encoding="utf-8")
    meta = {**meta, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
    for f in tmp.iterdir():  # make the data durable before the rename publishes it
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        old = out_dir / f".old-{name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


def is_checkpoint(path: Path) -> bool:
    return (path / TRAINER_STATE).is_file() and (path / META).is_file()


def read_meta(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / META).read_text(encoding="utf-8"))


def load_trainer_state(path: Path) -> dict[str, Any]:
    return torch.load(Path(path) / TRAINER_STATE, map_location="cpu", weights_only=True)


def load_rng_states(path: Path) -> list[dict[str, Any]]:
    return torch.load(Path(path) / RNG_STATES, map_location="cpu", weights_only=True)


def find_latest_checkpoint(path: Path) -> Path | None:
    """`path` itself when it is a checkpoint; else the newest checkpoint below it (by stage, then step)."""
    path = Path(path)
    if is_checkpoint(path):
        return path
    best, best_key = None, None
    for meta_file in path.rglob(META):
        ckpt = meta_file.parent
        if ckpt.name.startswith(".") or not is_checkpoint(ckpt):
            continue
        meta = read_meta(ckpt)
        key = (int(meta.get("stage_index", 0)), int(meta.get("step", 0)), bool(meta.get("final", False)))
        if best_key is None or key > best_key:
            best, best_key = ckpt, key
    return best


def prune_checkpoints(out_dir: Path, keep: int) -> None:
    """Keep the `keep` newest periodic checkpoints (the final one is named differently and always kept)."""
    if keep <= 0:
        return
    ckpts = sorted(p for p in Path(out_dir).glob(f"{PREFIX}*") if p.is_dir() and is_checkpoint(p))
    for old in ckpts[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
