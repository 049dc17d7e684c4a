"""Output folders are never reused by accident: an existing non-empty one needs `--resume` or `--overwrite`.

Why: writing into a previous run's folder silently replaces its `final/` and appends to its `metrics.jsonl`
(two runs mixed in one file), and a second import into an old store resumes it under different settings. The
user says which they mean; the refusal names both flags. The folder's writer lock (imagebert.runlock) is taken
before the check, so two processes cannot both decide the folder is theirs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from imagebert.errors import InputError
from imagebert.runlock import LOCK_NAME, WriterLock


class RunDirError(InputError):
    """The output folder holds something and the user did not say whether to continue or replace it."""


def folder_contents(folder: str | os.PathLike) -> list[str]:
    """Entry names of `folder` other than our lock file ([] when it does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK_NAME)


def _check_overwritable(folder: Path) -> None:
    resolved = folder.resolve()
    cwd = Path.cwd().resolve()
    protected = {Path("/"), Path.home().resolve()}
    if resolved in protected or resolved == cwd or resolved in cwd.parents:
        raise RunDirError(
            "refusing --overwrite on the root, home or current folder (or one above it); name a run folder",
            path=folder,
        )


def clear_folder(folder: Path) -> None:
    """Delete everything in `folder` except the lock file."""
    _check_overwritable(folder)
    for entry in folder.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def open_run_dir(
    folder: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    what: str = "run folder",
    lock: bool = True,
) -> WriterLock | None:
    """Check (and with `overwrite`, empty) `folder`; returns its held writer lock (None with lock=False).

    Raises RunDirError when it is non-empty and neither flag is given, LockedError when another process writes
    to it. The caller releases the lock when its work is done (or lets the process exit).
    """
    if resume and overwrite:
        raise RunDirError("give --resume or --overwrite, not both", path=folder)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunDirError(f"{what} path exists and is not a folder", path=folder)
    held = WriterLock(folder, what).acquire() if lock else None
    try:
        contents = folder_contents(folder)
        if contents and not resume and not overwrite:
            shown = ", ".join(repr(c) for c in contents[:3]) + (" ..." if len(contents) > 3 else "")
            raise RunDirError(
                f"{what} already exists and is not empty ({shown}); pass --resume to continue it or "
                "--overwrite to delete it and start again",
                path=folder,
            )
        if contents and overwrite:
            clear_folder(folder)
    except BaseException:
        if held is not None:
            held.release()
        raise
    return held


__all__ = ["RunDirError", "clear_folder", "folder_contents", "open_run_dir"]
