"""Issue 12 outside the store: score-cache integrity, run-folder refusals and locks, one-line errors for bad
configs and damaged checkpoints, resume consistency, and checkpoint leftovers."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imagebert.cli import main
from imagebert.retrieval.engine import BlockPlan, score_matrix
from imagebert.runlock import LockedError, WriterLock
from imagebert.training import checkpoint as ckpt

from .conftest import make_corpus, write_dataset, write_karpathy_dataset, write_pretrain_yaml


class _Scorer:
    def __init__(self) -> None:
        self.pairs = 0

    def score_pairs(self, c, i):
        self.pairs += len(c)
        return (np.cos(c * 0.37 + i * 1.3) + 2.0).astype(np.float32)  # never 0: zeros would be a wrong answer


KW = dict(block_captions=4, block_images=3, fingerprint={"model": "m"})


# ------------------------------------------------------------------------------------ item 1: score cache


def test_truncated_scores_npy_is_detected_and_recomputed(tmp_path):
    reference, _ = score_matrix(_Scorer(), 10, 7, **KW)
    cache = tmp_path / "cache"
    score_matrix(_Scorer(), 10, 7, cache_dir=cache, **KW)
    f = cache / "scores.npy"
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size - 100)  # the memmap would zero-fill this, and a done mask trusted it
    s = _Scorer()
    again, stats = score_matrix(s, 10, 7, cache_dir=cache, **KW)
    assert np.array_equal(again, reference)
    assert s.pairs == 70 and stats.blocks_cached == 0


def test_damaged_block_of_a_full_size_cache_fails_its_checksum_and_is_redone(tmp_path):
    reference, _ = score_matrix(_Scorer(), 10, 7, **KW)
    cache = tmp_path / "cache"
    score_matrix(_Scorer(), 10, 7, cache_dir=cache, **KW)
    mm = np.load(cache / "scores.npy", mmap_mode="r+")
    mm[5, 4] = 0.0  # block (1, 1): same size, wrong value
    mm.flush()
    del mm
    s = _Scorer()
    again, stats = score_matrix(s, 10, 7, cache_dir=cache, **KW)
    assert np.array_equal(again, reference)
    assert stats.blocks_corrupt == 1 and stats.blocks_scored == 1 and s.pairs == 4 * 3


def test_cache_without_checksums_is_recomputed_not_trusted(tmp_path):
    reference, _ = score_matrix(_Scorer(), 10, 7, **KW)
    cache = tmp_path / "cache"
    score_matrix(_Scorer(), 10, 7, cache_dir=cache, **KW)
    for f in cache.glob("blocks.rank*.npy"):  # what a cache from before the checksums looks like
        f.unlink()
    mm = np.load(cache / "scores.npy", mmap_mode="r+")
    mm[:] = 0.0
    mm.flush()
    del mm
    again, stats = score_matrix(_Scorer(), 10, 7, cache_dir=cache, **KW)
    assert np.array_equal(again, reference) and stats.blocks_cached == 0


def test_zero_block_size_is_an_error(capsys):
    with pytest.raises(ValueError, match="block_captions"):
        BlockPlan(10, 10, 0, 0)
    assert main(["evaluate", "--checkpoint", "x", "--dataset", "y", "--block", "0", "0"]) == 2
    err = capsys.readouterr().err
    assert "--block CAPTIONS must be >= 1" in err and err.count("\n") == 1


# ------------------------------------------------------------------------------------ locks and folders


def test_writer_lock_names_the_holder_and_frees_on_release(tmp_path):
    with (
        WriterLock(tmp_path / "out", "run folder"),
        pytest.raises(LockedError, match=f"is being written by process pid {os.getpid()}"),
    ):
        WriterLock(tmp_path / "out").acquire()
    WriterLock(tmp_path / "out").acquire().release()


def test_lock_is_dropped_when_the_holder_is_killed(tmp_path):
    code = (
        "import sys, time; from imagebert.runlock import WriterLock; "
        f"lock = WriterLock({str(tmp_path / 'o')!r}).acquire(); print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=f"pid {proc.pid}"):
            WriterLock(tmp_path / "o").acquire()
    finally:
        proc.kill()
        proc.wait()
    WriterLock(tmp_path / "o").acquire().release()  # kill -9 leaves no stale lock


def test_stale_checkpoint_temporaries_are_removed_live_ones_kept(tmp_path):
    stage = tmp_path / "run" / "1-s1"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    for name in (
        f".tmp-checkpoint-00000002-{dead_pid}",
        f".old-final-{dead_pid}",
        f".tmp-final-{os.getpid()}",
    ):
        (stage / name).mkdir(parents=True)
        (stage / name / "model.safetensors").write_bytes(b"x" * 100)
    (stage / "checkpoint-00000002").mkdir()
    removed = ckpt.remove_stale_temporaries(tmp_path / "run")
    assert sorted(p.name for p in removed) == sorted(
        [f".tmp-checkpoint-00000002-{dead_pid}", f".old-final-{dead_pid}"]
    )
    assert sorted(p.name for p in stage.iterdir()) == sorted(
        ["checkpoint-00000002", f".tmp-final-{os.getpid()}"]
    )


# ------------------------------------------------------------------------------------ pretrain end to end


@pytest.fixture(scope="module")
def pretrained(tiny_bert, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pre")
    caps, recs = make_corpus()
    spec = write_dataset(tmp / "ds", caps, recs)
    cfg = write_pretrain_yaml(tmp / "pretrain.yaml", tiny_bert, [spec], steps=4)
    assert main(["pretrain", str(cfg), "--out", str(tmp / "run")]) == 0
    return cfg, tmp


def _one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def test_pretrain_refuses_an_existing_run_folder(pretrained, capsys):
    cfg, tmp = pretrained
    run = tmp / "run"
    metrics_before = (run / "1-s1" / "metrics.jsonl").read_text()
    _one_line_error(capsys, ["pretrain", str(cfg), "--out", str(run)], "--resume", "--overwrite", str(run))
    assert (run / "1-s1" / "metrics.jsonl").read_text() == metrics_before  # untouched
    # another process writing the folder: refused, naming its pid
    with WriterLock(run, "run folder"):
        _one_line_error(
            capsys, ["pretrain", str(cfg), "--out", str(run), "--resume", str(run)], f"pid {os.getpid()}"
        )


def test_pretrain_overwrite_starts_a_clean_run(pretrained, tmp_path, capsys):
    cfg, tmp = pretrained
    out = tmp_path / "o"
    (out / "1-s1").mkdir(parents=True)
    (out / "1-s1" / "metrics.jsonl").write_text('{"step": 99}\n')
    assert main(["pretrain", str(cfg), "--out", str(out), "--overwrite"]) == 0
    steps = [json.loads(x)["step"] for x in (out / "1-s1" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # one run, not two mixed


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("stages.5.steps=3", "'stages' has 1 entries"),
        ("stages.x.steps=3", "'stages' is a list"),
        ("training.checkpoint_every=-1", "training.checkpoint_every must be >= 0"),
    ],
)
def test_bad_overrides_are_one_line(pretrained, tmp_path, capsys, override, needle):
    cfg, _ = pretrained
    _one_line_error(capsys, ["pretrain", str(cfg), "--out", str(tmp_path / "x"), "--set", override], needle)


def test_datasets_check_bad_list_index_is_one_line(pretrained, capsys):
    _, tmp = pretrained
    _one_line_error(capsys, ["datasets", "check", str(tmp / "ds" / "tiny.yaml"), "--set", "captions.3.path=x"],
                    "captions")  # fmt: skip


def test_resume_with_changed_batch_or_seed_is_refused_other_changes_recorded(pretrained, tmp_path, capsys):
    cfg, tmp = pretrained
    ck = tmp / "run" / "1-s1" / "checkpoint-00000002"
    for override in ("training.batch_size=3", "training.seed=7", "model.max_regions=9"):
        key = override.split("=")[0]
        _one_line_error(capsys, ["pretrain", str(cfg), "--out", str(tmp_path / "r"), "--resume", str(ck),
                                 "--set", override], key)  # fmt: skip
    assert main(["pretrain", str(cfg), "--out", str(tmp_path / "r"), "--resume", str(ck),
                 "--set", "training.learning_rate=0.002"]) == 0  # fmt: skip
    logged = json.loads((tmp_path / "r" / "resume_changes.jsonl").read_text().splitlines()[-1])
    assert logged["changes"]["training.learning_rate"] == [0.001, 0.002]


def _copy_checkpoint(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    ("name", "damage", "needle"),
    [
        ("model.safetensors", "truncate", "truncated"),
        ("model.safetensors", "empty", "empty or truncated"),
        ("trainer_state.pt", "truncate", "unreadable"),
        ("trainer_state.pt", "empty", "empty file"),
        ("trainer_state.pt", "pickle", "refused"),
    ],
)
def test_damaged_checkpoint_files_are_one_line_errors(pretrained, tmp_path, capsys, name, damage, needle):
    cfg, tmp = pretrained
    ck = _copy_checkpoint(
        tmp / "run" / "1-s1" / "checkpoint-00000002", tmp_path / "run" / "1-s1" / "checkpoint-00000002"
    )
    f = ck / name
    if damage == "truncate":
        with open(f, "r+b") as fh:
            fh.truncate(f.stat().st_size // 2)
    elif damage == "empty":
        f.write_bytes(b"")
    else:
        import torch

        class Evil:
            def __reduce__(self):
                return (os.system, ("echo pwned",))

        torch.save({"x": Evil()}, f, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    _one_line_error(capsys, ["pretrain", str(cfg), "--out", str(tmp_path / "run"), "--resume", str(ck)],
                    name, needle)  # fmt: skip


def test_leftover_temporary_checkpoint_is_cleaned_on_the_next_start(pretrained, tmp_path):
    cfg, tmp = pretrained
    run = tmp_path / "run"
    _copy_checkpoint(tmp / "run" / "1-s1" / "checkpoint-00000002", run / "1-s1" / "checkpoint-00000002")
    leftover = run / "1-s1" / ".tmp-checkpoint-00000004-2147480000"  # a pid that does not exist
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"0" * 1000)
    assert main(["pretrain", str(cfg), "--out", str(run), "--resume", str(run)]) == 0
    assert not leftover.exists() and (run / "1-s1" / "final").is_dir()


# ------------------------------------------------------------------------------------ evaluate and demo


def test_evaluate_refuses_its_folder_without_resume_and_truncated_weights_are_one_line(
    tiny_checkpoint, tmp_path, capsys
):
    data = write_karpathy_dataset(tmp_path / "data", {"test": 4})
    base = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", str(data), "--split", "test",
            "--protocol", "flickr1k", "--precision", "fp32", "--out", str(tmp_path / "ev")]  # fmt: skip
    assert main(base) == 0
    first = json.loads((tmp_path / "ev" / "results.json").read_text())["results"]
    capsys.readouterr()
    _one_line_error(capsys, base, "--resume")
    assert main([*base, "--resume"]) == 0
    assert (
        json.loads((tmp_path / "ev" / "results.json").read_text())["results"]["flickr1k"]["exhaustive"][
            "rsum"
        ]
        == first["flickr1k"]["exhaustive"]["rsum"]
    )
    capsys.readouterr()
    bad = _copy_checkpoint(tiny_checkpoint, tmp_path / "bad_ckpt")
    with open(bad / "model.safetensors", "r+b") as fh:
        fh.truncate(1000)
    _one_line_error(capsys, [*base[:2], str(bad), *base[3:-1], str(tmp_path / "ev2")], "model.safetensors")


def test_demo_rejects_bad_settings_before_building_anything(tmp_path, capsys):
    _one_line_error(
        capsys, ["demo", "--out", str(tmp_path / "d"), "--set", "pretrain_steps=-5"], "pretrain_steps"
    )
    assert not (tmp_path / "d").exists()
