"""Atomic write-then-rename, written once.

Why: a reader (a resumed run, a second rank, a web server) must see either the old file or the complete new one,
never a half-written one. Everything here writes to a temporary name in the same folder (same file system, so the
rename is atomic), optionally fsyncs it (data durable before the rename publishes it) and `os.replace`s it over
the target. Temporaries are named `.<name>.tmp<pid>` so concurrent writers in different processes never share
one and stale ones are easy to recognise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_copy",
    "atomic_open",
    "atomic_save_npy",
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_tree",
    "replace_dir",
    "temp_path",
]


def temp_path(path: str | os.PathLike, tag: str = "tmp") -> Path:
    """The temporary sibling a write to `path` goes through (per process)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{tag}{os.getpid()}")


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "wb", *, fsync: bool = True, **kwargs: Any
) -> Iterator[IO]:
    """Open a temporary for writing; on a clean exit it replaces `path`, on an exception it is removed."""
    if not mode.startswith(("w", "x")):
        raise ValueError(f"atomic_open writes whole files; mode {mode!r} is not a write mode")
    target = Path(path)
    tmp = temp_path(target)
    try:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> None:
    """Replace `path` with `data` atomically."""
    with atomic_open(path, "wb", fsync=fsync) as fh:
        fh.write(data)


def atomic_write_text(
    path: str | os.PathLike, text: str, *, fsync: bool = True, encoding: str = "utf-8"
) -> None:
    """Replace `path` with `text` atomically."""
    with atomic_open(path, "w", fsync=fsync, encoding=encoding) as fh:
        fh.write(text)


def atomic_save_npy(path: str | os.PathLike, array: Any, *, fsync: bool = True) -> None:
    """`np.save` to `path` atomically (the name is kept as given: no `.npy` is appended)."""
    import numpy as np

    with atomic_open(path, "wb", fsync=fsync) as fh:
        np.save(fh, array)


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike, *, fsync: bool = False) -> None:
    """Copy `src` to `dst` so that `dst` is never seen half-copied."""
    with atomic_open(dst, "wb", fsync=fsync) as out, open(src, "rb") as inp:
        shutil.copyfileobj(inp, out, 1 << 20)


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every regular file directly inside `folder` (before a `replace_dir` publishes it)."""
    for f in Path(folder).iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Publish the finished folder `tmp` as `final`, replacing an existing `final`.

    A folder cannot be renamed over a non-empty one, so the old one is first renamed aside and removed after
    the new one is in place: at every moment `final` is either the complete old or the complete new folder
    (between the two renames it is briefly absent, never partial).
    """
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final
