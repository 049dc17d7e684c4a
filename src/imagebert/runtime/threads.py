"""How many intra-op threads torch may use: the cores this process may really run on, not the machine's.

torch's default counts the host's cores, which in a container with a CPU quota (cgroup `cpu.max`) or under a
restricted affinity (`taskset`, a batch scheduler) starts far more threads than there are cores; they then fight
for the same cores and run several times slower. Every command takes `--threads N|auto` (`training.num_threads`
in training configs); `auto` caps torch's thread count at the usable cores (divided among the processes of a
`torchrun` node) and never raises it above what torch or `OMP_NUM_THREADS` already chose. A machine that is
oversubscribed (more threads requested than usable cores, or a load average well above them) is reported once.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CGROUP_ROOT_ENV = "IMAGEBERT_CGROUP_ROOT"  # tests point this at a fake cgroup folder
THREADS_HELP = (
    "torch intra-op threads: a number, or auto = the cores this process may use (CPU affinity and cgroup quota), "
    "shared among the processes of a torchrun node"
)
_warned = False


def _cgroup_root() -> Path:
    return Path(os.environ.get(CGROUP_ROOT_ENV, "/sys/fs/cgroup"))


def _own_cgroup_dirs(root: Path) -> list[Path]:
    """This process's cgroup v2 folder (from /proc/self/cgroup) and its parents, then the root."""
    dirs: list[Path] = []
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                rel = line[3:].strip().lstrip("/")
                d = root / rel if rel else root
                while True:
                    dirs.append(d)
                    if d == root or root not in d.parents:
                        break
                    d = d.parent
    except OSError:
        pass
    if root not in dirs:
        dirs.append(root)
    return dirs


def cgroup_cpu_limit(root: str | os.PathLike | None = None) -> float | None:
    """CPUs allowed by the cgroup quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us / cpu.cfs_period_us`); None = none."""
    base = Path(root) if root is not None else _cgroup_root()
    limits = []
    for d in _own_cgroup_dirs(base):
        try:
            quota, period = (d / "cpu.max").read_text().split()[:2]
        except (OSError, ValueError):
            continue
        if quota != "max" and float(period) > 0:
            limits.append(float(quota) / float(period))
    for v1 in (base / "cpu", base / "cpu,cpuacct", base):
        try:
            quota_us = float((v1 / "cpu.cfs_quota_us").read_text())
            period_us = float((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        if quota_us > 0 and period_us > 0:
            limits.append(quota_us / period_us)
    return min(limits) if limits else None


def usable_cores(cgroup_root: str | os.PathLike | None = None) -> int:
    """Cores this process may run on: the affinity set, capped by the cgroup CPU quota (rounded up)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit(cgroup_root)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota - 1e-9)))
    return max(1, cores)


def _processes_per_node() -> int:
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def parse_threads(value: Any, key: str = "threads") -> int | None:
    """`auto`/None -> None (choose), a positive integer -> itself; anything else is a ConfigError naming `key`."""
    from imagebert.config_utils import ConfigError

    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected a positive integer or 'auto', got {value!r}") from None
    if isinstance(value, bool) or n < 1 or (isinstance(value, float) and not value.is_integer()):
        raise ConfigError(f"{key}: expected a positive integer or 'auto', got {value!r}")
    return n


def choose_threads(requested: Any = "auto", *, current: int | None = None,
                   cgroup_root: str | os.PathLike | None = None) -> int:  # fmt: skip
    """The thread count for `requested` (N or auto): auto = min(current torch threads, usable cores / processes
    per node)."""
    n = parse_threads(requested)
    if n is not None:
        return n
    if current is None:
        import torch

        current = torch.get_num_threads()
    share = max(1, usable_cores(cgroup_root) // _processes_per_node())
    return max(1, min(current, share))


def oversubscription(threads: int, cgroup_root: str | os.PathLike | None = None, *,
                     check_load: bool = True) -> str | None:  # fmt: skip
    """Why `threads` threads per process would oversubscribe this machine, or None. The load average only counts
    when this process runs more than one thread (one thread is the least it can do about other processes)."""
    cores = usable_cores(cgroup_root)
    procs = _processes_per_node()
    if threads * procs > cores:
        who = f"{threads} threads x {procs} processes" if procs > 1 else f"{threads} threads"
        return f"{who} requested but this process may use only {cores} cores (affinity / cgroup quota)"
    if not check_load or threads < 2:
        return None
    try:
        load1 = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    if load1 > 1.5 * cores + 1:
        return (
            f"1-minute load average {load1:.1f} is well above the {cores} usable cores while this process runs "
            f"{threads} threads: other processes compete for the CPU, so timings will be slow and noisy"
        )
    return None


def warn_once(message: str) -> None:
    """Report on stderr once per process: through logging when it is configured, else printed."""
    global _warned
    if _warned:
        return
    _warned = True
    text = f"imagebert: warning: {message}"
    root = logging.getLogger()
    if root.handlers:
        log.warning(text)
        if not any(getattr(h, "stream", None) is sys.stderr for h in root.handlers):
            print(text, file=sys.stderr, flush=True)
    else:
        print(text, file=sys.stderr, flush=True)


def apply_threads(requested: Any = "auto", cgroup_root: str | os.PathLike | None = None, *,
                  check_load: bool = True) -> int:  # fmt: skip
    """Set torch's intra-op threads from `requested` (N or auto) before work starts; warns once when the machine
    is oversubscribed. `check_load=False` for I/O-bound commands, where other processes' load does not matter."""
    import torch

    n = choose_threads(requested, cgroup_root=cgroup_root)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    problem = oversubscription(n, cgroup_root, check_load=check_load)
    if problem:
        warn_once(problem + "; see --threads (docs/configuration.md)")
    return n


def threads_field(default: str = "auto") -> Any:
    """The one `threads` setting every command's dataclass carries (flag `--threads N|auto`)."""
    from imagebert.config_utils import meta

    return dataclasses.field(default=default, metadata=meta(THREADS_HELP, metavar="N|auto"))
