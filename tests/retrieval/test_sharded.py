"""Sharded evaluation over 2 gloo processes (torchrun) equals single-process evaluation, bit for bit."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from imagebert.cli import main

from .conftest import write_karpathy_dataset


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tmp_path, tiny_checkpoint):
    data = write_karpathy_dataset(tmp_path / "data", {"test": 6})
    common = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", str(data), "--split", "test",
              "--protocol", "flickr1k", "--mode", "both", "--k", "3", "--block", "10", "2", "--precision", "bf16",
              "--device", "cpu"]  # fmt: skip
    single = tmp_path / "single"
    assert main([*common, "--out", str(single)]) == 0

    sharded = tmp_path / "sharded"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "imagebert", *common, "--out", str(sharded)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    a = json.loads((single / "results.json").read_text())
    b = json.loads((sharded / "results.json").read_text())
    assert b["world_size"] == 2 and a["world_size"] == 1
    # a pre-training checkpoint is evaluated zero-shot, next to the paper's Table 1 rows
    assert a["setting"] == "zero-shot"
    assert (
        "| ImageBERT (paper) | 54.3 | 79.6 | 87.5 | 70.7 | 90.2 | 94.0 |"
        in (single / "results.md").read_text()
    )
    for mode in ("exhaustive", "fast k=3"):
        for key in ("image_retrieval", "text_retrieval", "rsum", "cross_encoder_pairs"):
            assert a["results"]["flickr1k"][mode][key] == b["results"]["flickr1k"][mode][key]
    # the score matrices themselves are identical, and both ranks really did part of the work
    for cache in ("flickr1k-0-exhaustive", "flickr1k-0-fast-k3"):
        m1 = np.load(single / "score_cache" / cache / "scores.npy")
        m2 = np.load(sharded / "score_cache" / cache / "scores.npy")
        assert np.array_equal(m1, m2, equal_nan=True)
        masks = [np.load(sharded / "score_cache" / cache / f"done.rank{r}.npy") for r in (0, 1)]
        assert masks[0].any() and masks[1].any() and (masks[0] | masks[1]).all()
