"""Progress for long commands: a tqdm bar (items/s and ETA) on a terminal, a log line every N seconds elsewhere,
and always one final summary line (count, time, rate).

Why both: an evaluation of a big gallery runs for hours and used to print nothing; a bar is the right thing on a
terminal, but in a log file (nohup, CI, torchrun) a redrawn bar is noise, so off a TTY the helper writes a plain
line at most every `log_every` seconds. Only rank 0 of a distributed run reports (other ranks stay quiet).
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any


def _is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _env_log_every(default: float) -> float:
    try:
        return float(os.environ.get("IMAGEBERT_PROGRESS_EVERY", default))
    except ValueError:
        return default


class Progress:
    """Count work done: `update(n)`; `close()` (or leaving the `with` block) prints the summary line.

    `total` may be None (unknown) or set later with `set_total`. `stream` defaults to stderr. `tty` forces the bar
    on or off (default: whether the stream is a terminal). `enabled` False silences everything, summary included.
    """

    def __init__(
        self,
        desc: str,
        total: int | None = None,
        *,
        unit: str = "items",
        stream: IO[str] | None = None,
        log_every: float = 30.0,
        tty: bool | None = None,
        enabled: bool | None = None,
    ) -> None:
        self.desc = desc
        self.total = total
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.log_every = _env_log_every(log_every)
        self.enabled = _is_main_rank() if enabled is None else enabled
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.tty = bool(isatty()) if tty is None else tty
        self.count = 0
        self.start = time.perf_counter()
        self._last_log = self.start
        self._bar: Any = None
        self._closed = False
        if self.enabled and self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=f" {unit}", file=self.stream, dynamic_ncols=True,
                             smoothing=0.1)  # fmt: skip

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_total(self, total: int) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def rate(self) -> float:
        e = self.elapsed
        return self.count / e if e > 0 else 0.0

    def update(self, n: int = 1) -> None:
        self.count += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.perf_counter()
        if now - self._last_log >= self.log_every:
            self._last_log = now
            self._write(self._status_line())

    def _status_line(self) -> str:
        rate = self.rate()
        done = f"{self.count:,}" + (f"/{self.total:,}" if self.total else "")
        eta = ""
        if self.total and rate > 0 and self.count < self.total:
            eta = f", ETA {format_seconds((self.total - self.count) / rate)}"
        return (
            f"{self.desc}: {done} {self.unit}, {format_seconds(self.elapsed)}, {rate:,.1f} {self.unit}/s{eta}"
        )

    def summary(self) -> str:
        """The one-line summary: count, time, rate."""
        return (
            f"{self.desc}: {self.count:,} {self.unit} in {format_seconds(self.elapsed)} "
            f"({self.rate():,.1f} {self.unit}/s)"
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        if self.enabled:
            self._write(self.summary())

    def _write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


def format_seconds(s: float) -> str:
    """'12.3 s', '4 min 05 s', '2 h 03 min'."""
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        m, sec = divmod(int(round(s)), 60)
        return f"{m} min {sec:02d} s"
    h, rem = divmod(int(round(s)), 3600)
    return f"{h} h {rem // 60:02d} min"
