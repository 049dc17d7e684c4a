"""A real 2-process DDP run (torchrun, gloo on CPU) through the CLI, on a feature store built by the data API."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import make_corpus, write_dataset, write_pretrain_yaml


@pytest.mark.slow
def test_torchrun_two_processes_keep_replicas_identical(tiny_bert, tmp_path):
    caps, recs = make_corpus(num_images=12, captions_per_image=2)
    spec = write_dataset(tmp_path / "ds", caps, recs)
    cfg = write_pretrain_yaml(tmp_path / "pretrain.yaml", tiny_bert, [spec], steps=4)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "imagebert", "pretrain", str(cfg), "--out", str(out), "--set", "training.grad_accum_steps=2",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("final checkpoint:") == 1  # only rank 0 reports
    meta = json.loads((out / "1-s1" / "final" / "meta.json").read_text())
    assert meta["world_size"] == 2
    sums = meta["replica_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]  # DDP kept the two replicas bit-identical
    records = [json.loads(x) for x in (out / "1-s1" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # written once (rank 0), not per rank
    assert all(r["world_size"] == 2 for r in records)
    # 24 pairs / (4 per batch x 2 ranks) = 3 batches per rank per epoch; 4 steps x 2 micro-batches = 8 batches
    state = meta["epoch"], meta["batch_in_epoch"]
    assert state == (2, 2)
