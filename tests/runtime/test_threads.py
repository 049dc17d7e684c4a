"""Thread choice from the cores a process may really use: affinity, cgroup quota, and the oversubscription warning."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from imagebert.config_utils import ConfigError
from imagebert.runtime import threads


def _fake_cgroup(tmp_path, v2: str | None = None, v1: tuple[int, int] | None = None):
    root = tmp_path / "cgroup"
    root.mkdir(parents=True)
    if v2 is not None:
        (root / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (root / "cpu").mkdir()
        (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{v1[0]}\n")
        (root / "cpu" / "cpu.cfs_period_us").write_text(f"{v1[1]}\n")
    return root


def test_cgroup_quota_caps_the_usable_cores(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    assert threads.cgroup_cpu_limit(_fake_cgroup(tmp_path / "a", v2="max 100000")) is None
    half = _fake_cgroup(tmp_path / "b", v2="50000 100000")
    assert threads.cgroup_cpu_limit(half) == pytest.approx(0.5)
    assert threads.usable_cores(half) == 1  # a fraction of a core still gets one thread
    v1 = _fake_cgroup(tmp_path / "c", v1=(150000, 100000))
    assert threads.cgroup_cpu_limit(v1) == pytest.approx(1.5)
    assert threads.usable_cores(v1) == min(affinity, 2)
    assert threads.usable_cores(_fake_cgroup(tmp_path / "d", v1=(-1, 100000))) == affinity  # -1 = no quota
    # auto never raises torch's count and never exceeds the quota
    assert threads.choose_threads("auto", current=8, cgroup_root=half) == 1
    assert threads.choose_threads("auto", current=1, cgroup_root=v1) == 1
    assert threads.choose_threads(3, current=1, cgroup_root=half) == 3  # an explicit number is taken as given
    assert threads.oversubscription(3, half) is not None and "only 1 cores" in threads.oversubscription(
        3, half
    )


def test_processes_of_a_torchrun_node_share_the_cores(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    root = _fake_cgroup(tmp_path, v2="400000 100000")
    usable = threads.usable_cores(root)
    assert threads.choose_threads("auto", current=64, cgroup_root=root) == max(1, usable // 2)


@pytest.mark.parametrize("bad", ["0", "-2", "many", 1.5, True])
def test_bad_thread_settings_name_the_key(bad):
    with pytest.raises(ConfigError, match="training.num_threads"):
        threads.parse_threads(bad, "training.num_threads")
    assert threads.parse_threads("auto") is None and threads.parse_threads("4") == 4


CHILD = """
import json, os, sys
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
import torch
from imagebert.cli import main
from imagebert.runtime.threads import usable_cores
seen = []
for req in ("auto", "3", "4"):
    rc = main(["features", "info", sys.argv[1], "--threads", req])
    print("after " + req, file=sys.stderr, flush=True)
    seen.append({"rc": rc, "threads": torch.get_num_threads()})
print(json.dumps({"seen": seen, "usable": usable_cores()}))
"""


@pytest.mark.slow
def test_restricted_affinity_in_a_subprocess(tmp_path):
    """One allowed core: auto picks 1 thread; asking for 3 warns once on stderr (not again for 4), naming --threads."""
    import numpy as np

    from imagebert.data.store import FeatureStoreWriter
    from imagebert.data.types import RegionRecord

    with FeatureStoreWriter(tmp_path / "s", feature_dim=4) as w:
        w.add(RegionRecord("a", np.zeros((2, 4), np.float32), np.array([[0, 0, 1, 1]] * 2, np.float32), 4, 4))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE")}
    env[threads.CGROUP_ROOT_ENV] = str(tmp_path / "no-cgroup")  # no quota files: affinity decides
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "s")], capture_output=True, text=True,
                          timeout=120, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["usable"] == 1
    assert got["seen"] == [{"rc": 0, "threads": 1}, {"rc": 0, "threads": 3}, {"rc": 0, "threads": 4}]
    auto_err, rest = proc.stderr.split("after auto\n", 1)
    assert "warning" not in auto_err
    warning = "imagebert: warning: 3 threads requested but this process may use only 1 cores"
    assert rest.count("imagebert: warning:") == 1 and warning in rest.split("after 3\n")[0]
    assert "--threads" in rest
