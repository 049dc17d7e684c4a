"""One exclusive writer per output (feature store, run folder, LAIT output): a second writer is refused at once.

Why flock on a lock file: the kernel drops the lock when the holder dies (kill -9 included), so a crash never
leaves a stale lock to delete by hand, and readers are unaffected. The holder writes its pid (and host) into the
file so the refusal can say who holds it. Two writers interleaving into one store or run folder would make it
read as complete while still being written, or mix two runs' metrics: refusing is the only safe answer.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imagebert.errors import InputError

LOCK_NAME = ".imagebert-writer.lock"


class LockedError(InputError):
    """Another process is writing to this output."""


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return "another process"
    return f"process {text}" if text else "another process"


class WriterLock:
    """An exclusive, non-blocking lock on `folder/.imagebert-writer.lock`; `what` names the output in messages.

    Re-entrant within one object only: two WriterLock objects on the same folder conflict even in one process
    (flock locks belong to the open file), which is what the tests rely on.
    """

    def __init__(self, folder: str | os.PathLike, what: str = "output folder") -> None:
        self.folder = Path(folder)
        self.what = what
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> WriterLock:
        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockedError(
                f"{self.what} is being written by {_holder(self.path)}; wait for it to finish (or stop it) "
                "before writing here again, or use another output folder",
                path=self.folder,
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # the file stays (unlinking would race a waiting writer); it just says "free"
        os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:  # a lost writer object must not keep the output locked
        with contextlib.suppress(Exception):
            self.release()


@contextlib.contextmanager
def writer_lock(folder: str | os.PathLike, what: str = "output folder") -> Iterator[WriterLock]:
    """`with writer_lock(out, "run folder"):` holds the lock for the block."""
    lock = WriterLock(folder, what).acquire()
    try:
        yield lock
    finally:
        lock.release()


def is_main_process() -> bool:
    """Rank 0 (or no torchrun): the process that takes run-folder locks and makes refusals."""
    return int(os.environ.get("RANK", "0")) == 0


__all__ = ["LOCK_NAME", "LockedError", "WriterLock", "is_main_process", "writer_lock"]
