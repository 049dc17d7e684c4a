"""Fault injection: kill -9 a real import, extraction, pre-training, fine-tuning and evaluation at a random point,
resume it with --resume, and require the result to equal the uninterrupted run's (bitwise).

The kill point is random per seed: the subprocess is killed a random delay after it has visibly started writing
(its store, checkpoint or score cache appeared). More seeds: FAULT_SEEDS=0,1,2,3 (default "0"; import uses two).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from imagebert.cli import main
from imagebert.data import FeatureStore

from ..data.helpers import BUTD_FIELDS, butd_row, make_image, write_tsv
from .conftest import make_corpus, write_dataset, write_karpathy_dataset, write_pretrain_yaml

pytestmark = pytest.mark.slow
SEEDS = [int(s) for s in os.environ.get("FAULT_SEEDS", "0").split(",")]
ROOT = Path(__file__).resolve().parents[2]


def kill_at_random_point(argv: list[str], started: Callable[[], bool], seed: int, max_delay: float,
                         log: Path, timeout: float = 240) -> bool:  # fmt: skip
    """Run `imagebert argv` in a subprocess; once `started()` holds, wait U(0, max_delay) s and SIGKILL it.
    Returns True when it was killed (False: it finished first, which the comparison covers as well)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "imagebert", *argv], stdout=fh, stderr=fh, env=env)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and not started():
            if time.monotonic() > deadline:
                raise AssertionError(f"{argv[0]} never started writing: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        time.sleep(float(np.random.default_rng(seed).uniform(0, max_delay)))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        assert proc.returncode == 0, log.read_text()[-2000:]
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _same_store(a: Path, b: Path) -> None:
    sa, sb = FeatureStore(a), FeatureStore(b)
    assert sa.ids() == sb.ids() and len(sa) == len(sb)
    for ra, rb in zip(sa, sb, strict=True):
        assert ra.image_id == rb.image_id
        for name in ("features", "boxes", "class_ids", "class_confidences", "class_probs"):
            x, y = getattr(ra, name), getattr(rb, name)
            assert (x is None and y is None) or np.array_equal(x, y), name
    drop = ("import_runs", "path", "size_mib")
    assert {k: v for k, v in sa.info().items() if k not in drop} == {
        k: v for k, v in sb.info().items() if k not in drop
    }


def _same_weights(a: Path, b: Path) -> None:
    from safetensors.numpy import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert np.array_equal(wa[k], wb[k]), k


@pytest.mark.parametrize("seed", sorted({*SEEDS, SEEDS[0] + 1}))
def test_import_killed_and_resumed_equals_uninterrupted(tmp_path, seed):
    imgs = [make_image(f"k{i:05d}", n=3, d=8, seed=i) for i in range(1500)]
    src = write_tsv(tmp_path / "a.tsv", [butd_row(i) for i in imgs], BUTD_FIELDS)
    base = ["features", "import", "--format", "butd-tsv", str(src)]
    assert main([*base, "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "killed"
    kill_at_random_point([*base, "--out", str(out)], lambda: (out / "data.mdb").exists(), seed, 1.5,
                         tmp_path / "log.txt")  # fmt: skip
    assert main([*base, "--out", str(out), "--resume"]) == 0
    _same_store(tmp_path / "ref", out)


@pytest.mark.parametrize("seed", SEEDS)
def test_extraction_killed_and_resumed_equals_uninterrupted(tmp_path, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    (tmp_path / "imgs").mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(
            tmp_path / "imgs" / f"p{i}.png"
        )
    base = ["extract", str(tmp_path / "imgs"), "--grid", "1", "--image-size", "64", "--batch-size", "1",
            "--workers", "1", "--no-progress"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "killed"
    kill_at_random_point([*base, "--out", str(out)], lambda: (out / "data.mdb").exists(), seed, 3.0,
                         tmp_path / "log.txt")  # fmt: skip
    assert main([*base, "--out", str(out), "--resume"]) == 0
    _same_store(tmp_path / "ref", out)


@pytest.mark.parametrize("seed", SEEDS)
def test_pretraining_killed_and_resumed_equals_uninterrupted(tmp_path, tiny_bert, seed):
    caps, recs = make_corpus()
    spec = write_dataset(tmp_path / "ds", caps, recs)
    cfg = write_pretrain_yaml(tmp_path / "p.yaml", tiny_bert, [spec], steps=8)
    assert main(["pretrain", str(cfg), "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "killed"
    first = out / "1-s1" / "checkpoint-00000002"
    kill_at_random_point(["pretrain", str(cfg), "--out", str(out)], lambda: (first / "meta.json").exists(), seed,
                         4.0, tmp_path / "log.txt")  # fmt: skip
    assert main(["pretrain", str(cfg), "--out", str(out), "--resume", str(out)]) == 0
    _same_weights(tmp_path / "ref" / "1-s1" / "final", out / "1-s1" / "final")
    assert not list((out / "1-s1").glob(".tmp-*"))


@pytest.mark.parametrize("seed", SEEDS)
def test_finetuning_killed_and_resumed_equals_uninterrupted(tmp_path, tiny_checkpoint, seed):
    data = write_karpathy_dataset(tmp_path / "data", {"train": 12, "val": 4})
    base = ["finetune", str(ROOT / "configs" / "finetune" / "demo_cpu.yaml"),
            "--set", f"dataset={data}", "--set", f"init_checkpoint={tiny_checkpoint}",
            "--set", "training.steps=8", "--set", "training.checkpoint_every=2", "--set", "training.batch_size=4",
            "--set", "negatives.pool_size=4", "--set", "validation.num_queries=4",
            "--set", "validation.num_candidates=3", "--set", "training.precision=fp32"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "killed"
    kill_at_random_point([*base, "--out", str(out)], lambda: (out / "checkpoint-00000002" / "meta.json").exists(),
                         seed, 4.0, tmp_path / "log.txt")  # fmt: skip
    assert main([*base, "--out", str(out), "--resume", str(out)]) == 0
    _same_weights(tmp_path / "ref" / "final", out / "final")


@pytest.mark.parametrize("seed", SEEDS)
def test_evaluation_killed_and_resumed_equals_uninterrupted(tmp_path, tiny_checkpoint, seed):
    data = write_karpathy_dataset(tmp_path / "data", {"test": 12})
    base = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", str(data), "--split", "test",
            "--protocol", "flickr1k", "--precision", "fp32", "--block", "6", "2", "--batch-size", "8"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "killed"
    cache = out / "score_cache" / "flickr1k-0-exhaustive"
    kill_at_random_point([*base, "--out", str(out)], lambda: (cache / "blocks.rank0.npy").exists(), seed, 3.0,
                         tmp_path / "log.txt")  # fmt: skip
    assert main([*base, "--out", str(out), "--resume"]) == 0
    ref = np.load(tmp_path / "ref" / "score_cache" / "flickr1k-0-exhaustive" / "scores.npy")
    assert np.array_equal(ref, np.load(cache / "scores.npy"))
    r1 = json.loads((tmp_path / "ref" / "results.json").read_text())["results"]["flickr1k"]["exhaustive"]
    r2 = json.loads((out / "results.json").read_text())["results"]["flickr1k"]["exhaustive"]
    for key in ("image_retrieval", "text_retrieval", "rsum"):
        assert r1[key] == r2[key]
