"""Atomic, self-describing checkpoints: a folder per save, written under a temporary name and renamed into place.

Layout of `checkpoint-00001000/`:
    config.json, model.safetensors     model.save_pretrained (safetensors)
    processor_config.json, tokenizer*  the ImageBertProcessor (written by the task's save hook; from older
                                       checkpoints' tokenizer files `load_processor` rebuilds it)
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
import pickle
import random
import re
import shutil
import struct
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imagebert.errors import InputError

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
    from imagebert.runtime.atomic import fsync_tree, replace_dir

    fsync_tree(tmp)  # make the data durable before the rename publishes it
    return replace_dir(tmp, final)  # the old folder goes aside as .old-<name>-<pid>, then is removed


def load_processor(path: str | os.PathLike, config: Any = None) -> Any:
    """The ImageBertProcessor of a checkpoint: the saved one, or (a checkpoint from before processors were
    saved) one built from its config.json + tokenizer files. Sizes that disagree with `config` raise a
    CheckpointError."""
    from imagebert.modeling.processing import PROCESSOR_CONFIG, ImageBertProcessor

    path = Path(path)
    try:
        processor = ImageBertProcessor.from_checkpoint(path, config)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load the processor ({exc})", path=path / PROCESSOR_CONFIG) from None
    if config is not None:
        try:
            processor.check_model(config)
        except ValueError as exc:
            raise CheckpointError(str(exc), path=path / PROCESSOR_CONFIG) from None
    return processor


def is_checkpoint(path: Path) -> bool:
    return (path / TRAINER_STATE).is_file() and (path / META).is_file()


def read_meta(path: Path) -> dict[str, Any]:
    f = Path(path) / META
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CheckpointError("not valid JSON (truncated or damaged)", path=f) from None


def load_trainer_state(path: Path) -> dict[str, Any]:
    """Weights-only load; a truncated, empty or object-holding file is a CheckpointError naming it."""
    return _safe_torch_load(Path(path) / TRAINER_STATE)


def load_rng_states(path: Path) -> list[dict[str, Any]]:
    return _safe_torch_load(Path(path) / RNG_STATES)


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


# ------------------------------------------------------------------------------------------- integrity checks


class CheckpointError(InputError):
    """A checkpoint file that cannot be used (truncated, empty, or refused by weights-only loading)."""


def _safe_torch_load(file: Path) -> Any:
    """torch.load(weights_only=True) with every failure turned into one CheckpointError naming the file."""
    if not file.is_file():
        raise CheckpointError("missing (not a complete checkpoint)", path=file)
    if file.stat().st_size == 0:
        raise CheckpointError("empty file (an interrupted copy?)", path=file)
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            "refused: it holds Python objects other than tensors and plain containers, and checkpoints are "
            f"only loaded weights-only (never unpickled) ({first[:200]})",
            path=file,
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"unreadable (truncated or not a torch file: {first[:200]})", path=file
        ) from None


def check_safetensors(file: str | os.PathLike) -> None:
    """Header and size of a .safetensors file (8-byte length, JSON header, data as long as the header says)."""
    file = Path(file)
    if not file.is_file():
        raise CheckpointError("missing", path=file)
    size = file.stat().st_size
    with open(file, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{size} bytes: empty or truncated safetensors file", path=file)
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100 << 20:
            raise CheckpointError(f"header length {n} exceeds the file ({size} bytes): truncated", path=file)
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, ValueError):
            raise CheckpointError("unreadable safetensors header (truncated or damaged)", path=file) from None
    if not isinstance(header, dict):
        raise CheckpointError("unreadable safetensors header", path=file)
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(entry["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            raise CheckpointError(f"bad header entry for tensor {name!r}", path=file) from None
    if 8 + n + end > size:
        raise CheckpointError(f"{size} bytes but the header needs {8 + n + end}: truncated", path=file)


def _check_torch_zip(file: Path) -> None:
    if not file.is_file():
        raise CheckpointError("missing (not a complete checkpoint)", path=file)
    if file.stat().st_size == 0:
        raise CheckpointError("empty file (an interrupted copy?)", path=file)
    try:
        with zipfile.ZipFile(file) as zf:
            zf.infolist()
    except (zipfile.BadZipFile, OSError):
        raise CheckpointError("unreadable (truncated or not a torch file)", path=file) from None


def verify_checkpoint(path: str | os.PathLike, *, trainer_files: bool = True) -> None:
    """Cheap structural checks of a checkpoint folder before anything loads it (no tensors are read)."""
    path = Path(path)
    for name in ("config.json", *((META,) if trainer_files else ())):
        f = path / name
        if not f.is_file():
            raise CheckpointError("missing (not a complete checkpoint)", path=f)
        try:
            json.loads(f.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise CheckpointError("not valid JSON (truncated or damaged)", path=f) from None
    check_safetensors(path / "model.safetensors")
    if trainer_files:
        _check_torch_zip(path / TRAINER_STATE)
        _check_torch_zip(path / RNG_STATES)


# ----------------------------------------------------------------------------------- leftovers and resumption

_TEMP = re.compile(r"^\.(tmp|old)-.+-(\d+)$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(out_dir: str | os.PathLike, depth: int = 2) -> list[Path]:
    """Delete `.tmp-<name>-<pid>` / `.old-<name>-<pid>` checkpoint folders left by a killed run (up to `depth`
    folder levels below `out_dir`) whose writer process is gone. Call it while holding the run-folder lock."""
    removed: list[Path] = []
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return removed
    level = [out_dir]
    for _ in range(depth):
        nxt = []
        for folder in level:
            try:
                entries = list(folder.iterdir())
            except OSError:
                continue
            for entry in entries:
                if not entry.is_dir() or entry.is_symlink():
                    continue
                m = _TEMP.match(entry.name)
                if m is None:
                    nxt.append(entry)
                elif not _pid_alive(int(m.group(2))):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
        level = nxt
    return removed


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        for i, v in enumerate(data):
            out.update(_flatten(v, f"{prefix}{i}."))
    else:
        out[prefix.rstrip(".")] = data
    return out


def resume_config_changes(
    checkpoint: str | os.PathLike,
    new_config: dict[str, Any],
    refuse: tuple[str, ...],
    ignore: tuple[str, ...] = (),
) -> tuple[list[str], dict[str, tuple[Any, Any]]]:
    """Compare the checkpoint's run_config.yaml with the config of the run resuming it.

    Returns (refusals, changes): refusals are one-line reasons for keys matching a `refuse` pattern (a dotted key;
    `*` matches one part, e.g. `stages.*.batch_size`) whose value changed; changes maps every other changed key to
    (old, new). No run_config.yaml (an older checkpoint) means nothing to compare.
    """
    import fnmatch

    import yaml

    f = Path(checkpoint) / RUN_CONFIG
    if not f.is_file():
        return [], {}
    try:
        old = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        raise CheckpointError("unreadable run_config.yaml", path=f) from None
    a, b = _flatten(old), _flatten(new_config)
    refusals: list[str] = []
    changes: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(a) | set(b)):
        if a.get(key) == b.get(key) or any(fnmatch.fnmatchcase(key, p) for p in ignore):
            continue
        if any(fnmatch.fnmatchcase(key, p) for p in refuse):
            refusals.append(f"{key} was {a.get(key)!r} in {checkpoint}, now {b.get(key)!r}")
        else:
            changes[key] = (a.get(key), b.get(key))
    return refusals, changes
