"""Atomic writes: the target is the old or the complete new content, never partial; temporaries never linger."""

from __future__ import annotations

import numpy as np
import pytest

from imagebert.runtime.atomic import (
    atomic_copy,
    atomic_open,
    atomic_save_npy,
    atomic_write_bytes,
    atomic_write_text,
    replace_dir,
    temp_path,
)


def test_text_bytes_and_npy_replace_the_target(tmp_path):
    f = tmp_path / "a.json"
    atomic_write_text(f, "old")
    atomic_write_text(f, "new", fsync=False)
    assert f.read_text() == "new"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    atomic_save_npy(tmp_path / "blocks.rank0.npy", np.arange(3))
    assert np.load(tmp_path / "blocks.rank0.npy").tolist() == [0, 1, 2]
    atomic_copy(tmp_path / "b.bin", tmp_path / "c.bin")
    assert (tmp_path / "c.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin", "blocks.rank0.npy", "c.bin"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    f = tmp_path / "manifest.json"
    f.write_text("complete old content")
    with pytest.raises(RuntimeError), atomic_open(f, "w", encoding="utf-8") as fh:
        fh.write("half of the new")
        raise RuntimeError("killed mid-write")
    assert f.read_text() == "complete old content"
    assert not temp_path(f).exists() and [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
    with pytest.raises(ValueError, match="not a write mode"), atomic_open(f, "a"):
        pass


def test_replace_dir_swaps_whole_folders(tmp_path):
    final = tmp_path / "best"
    for version in ("v1", "v2"):
        work = tmp_path / f".tmp-best-{version}"
        work.mkdir()
        (work / "weights").write_text(version)
        replace_dir(work, final)
        assert (final / "weights").read_text() == version and not work.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["best"]  # the old folder set aside is gone too
