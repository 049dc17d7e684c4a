"""Issue 12 for the feature store and import: nothing lost, nothing wrong in silence.

fp16 overflow, the writer lock, duplicates across an interrupted import, empty sources, flipped boxes, per-record
checksums (and stores written before them), a truncated data.mdb, npz files that are not npz, and the CLI refusal
of an existing store without --resume/--overwrite."""

from __future__ import annotations

import json
import subprocess
import sys

import lmdb
import numpy as np
import pytest

from imagebert.cli import main
from imagebert.data import FeatureStore, FeatureStoreWriter, RegionRecord
from imagebert.data.importer import import_features
from imagebert.data.store import COMPLETE_KEY, META_KEY, REC_PREFIX, CorruptRecordError, verify_store
from imagebert.errors import InputError
from imagebert.runlock import LockedError

from .helpers import BUTD_FIELDS, butd_row, make_image, write_tsv


def _rec(image_id: str, n: int = 6, d: int = 64, seed: int = 0) -> RegionRecord:
    img = make_image(image_id, n=n, d=d, seed=seed)
    return RegionRecord(image_id, img["features"], img["boxes"], img["w"], img["h"])


def _store(path, n: int = 5, **kw) -> list[RegionRecord]:
    recs = [_rec(f"im{i}", seed=i) for i in range(n)]
    with FeatureStoreWriter(path, **kw) as w:
        for r in recs:
            w.add(r)
    return recs


# ------------------------------------------------------------------------------------------- item 3: fp16 range


def test_finite_value_outside_fp16_is_refused_naming_file_line_field(tmp_path):
    imgs = [make_image(f"i{k}", seed=k) for k in range(3)]
    imgs[1]["features"][2, 5] = 1e6  # finite, passes the NaN/inf check, but inf in fp16
    src = write_tsv(tmp_path / "a.tsv", [butd_row(i) for i in imgs], BUTD_FIELDS)
    with pytest.raises(InputError, match="float16 range") as e:
        import_features("butd-tsv", [src], tmp_path / "s")
    assert (e.value.record, e.value.field) == (2, "features") and "a.tsv" in str(e.value)
    assert "box 2, column 5" in str(e.value) and "--dtype float32" in str(e.value)
    # stored as fp32 when asked, exactly
    import_features("butd-tsv", [src], tmp_path / "f32", dtype="float32")
    assert FeatureStore(tmp_path / "f32")["i1"].features[2, 5] == np.float32(1e6)
    # nothing infinite ever reaches a store
    report = import_features("butd-tsv", [src], tmp_path / "skip", skip_bad=True)
    assert report.skipped == {"out_of_range": 1}
    assert all(np.isfinite(r.features).all() for r in FeatureStore(tmp_path / "skip"))


# ------------------------------------------------------------------------------------------- item 4: lock + dup


def test_second_writer_is_refused_with_the_holders_pid(tmp_path):
    import os

    first = FeatureStoreWriter(tmp_path / "s")
    first.add(_rec("a"))
    with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
        FeatureStoreWriter(tmp_path / "s")
    first.close()
    with FeatureStoreWriter(tmp_path / "s") as again:  # free once the first one closed
        again.add(_rec("b", seed=1))
    assert FeatureStore(tmp_path / "s").ids() == ["a", "b"]


def test_second_import_process_is_refused_while_the_first_writes(tmp_path):
    """A real second process: it must fail fast and leave the first one's store incomplete-until-done."""
    holder = FeatureStoreWriter(tmp_path / "s")
    imgs = [make_image(f"x{k}", seed=k) for k in range(2)]
    src = write_tsv(tmp_path / "a.tsv", [butd_row(i) for i in imgs], BUTD_FIELDS)
    code = (
        "import sys; from imagebert.cli import main; "
        f"sys.exit(main(['features', 'import', '--format', 'butd-tsv', {str(src)!r}, '--out', "
        f"{str(tmp_path / 's')!r}, '--resume']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    holder.close()
    assert proc.returncode == 2, proc.stderr
    assert "being written by process pid" in proc.stderr and proc.stderr.count("\n") == 1
    assert len(FeatureStore(tmp_path / "s")) == 0  # the refused import wrote nothing


def test_duplicate_id_after_an_interrupted_import_is_the_same_error(tmp_path):
    imgs = [make_image(f"d{k}", seed=k) for k in range(4)]
    rows = [butd_row(i) for i in imgs] + [butd_row(imgs[0])]  # d0 appears twice
    src = write_tsv(tmp_path / "a.tsv", rows, BUTD_FIELDS)
    with pytest.raises(InputError, match="duplicate image id 'd0'") as single:
        import_features("butd-tsv", [src], tmp_path / "one")
    import_features("butd-tsv", [src], tmp_path / "two", limit=2)  # interrupted after d0, d1
    with pytest.raises(InputError, match="duplicate image id 'd0'") as resumed:
        import_features("butd-tsv", [src], tmp_path / "two")
    assert single.value.record == resumed.value.record == 5
    with pytest.raises(InputError, match="incomplete"):
        FeatureStore(tmp_path / "two")


# ------------------------------------------------------------------------------------------- item 6: nonsense


def test_empty_source_is_an_error_unless_allowed(tmp_path, capsys):
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(InputError, match="no records to import"):
        import_features("butd-tsv", [empty], tmp_path / "s")
    with pytest.raises(InputError, match="incomplete"):
        FeatureStore(tmp_path / "s")
    assert main(["features", "import", "--format", "butd-tsv", str(empty), "--out", str(tmp_path / "c")]) == 2
    assert "empty.tsv" in capsys.readouterr().err
    assert main(["features", "import", "--format", "butd-tsv", str(empty), "--out", str(tmp_path / "c"),
                 "--resume", "--allow-empty"]) == 0  # fmt: skip
    assert len(FeatureStore(tmp_path / "c")) == 0
    import h5py

    with h5py.File(tmp_path / "e.h5", "w"):
        pass
    with pytest.raises(InputError, match="no records"):
        import_features("hdf5", [tmp_path / "e.h5"], tmp_path / "h")


def test_boxes_with_x2_below_x1_are_refused(tmp_path):
    img = make_image("b", seed=3)
    img["boxes"][4] = [100, 50, 40, 90]
    src = write_tsv(tmp_path / "a.tsv", [butd_row(img)], BUTD_FIELDS)
    with pytest.raises(InputError, match="box 4 .* x2 < x1") as e:
        import_features("butd-tsv", [src], tmp_path / "s")
    assert (e.value.record, e.value.field) == (1, "boxes")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (np.random.default_rng(0).bytes(300), "not an npz"),
        (b"\x93NUMPY\x01\x00", ".npy"),
    ],
)
def test_files_that_are_not_npz_are_not_called_pickled(tmp_path, content, message):
    folder = tmp_path / "npz"
    folder.mkdir()
    (folder / "x.npz").write_bytes(content)
    with pytest.raises(InputError, match=message) as e:
        import_features("npz-butd", [folder], tmp_path / "s")
    assert "pickle" not in str(e.value) and e.value.record == "x.npz"


# ------------------------------------------------------------------------------------------- item 7: checksums


def _flip_byte_inside(path, needle: bytes, offset: int = 40) -> None:
    """Flip one bit in every copy of `needle` (copy-on-write leaves stale copies in free pages)."""
    data = bytearray((path / "data.mdb").read_bytes())
    at = data.find(needle)
    assert at >= 0
    while at >= 0:
        data[at + offset] ^= 0x10
        at = data.find(needle, at + 1)
    (path / "data.mdb").write_bytes(bytes(data))


def test_flipped_bytes_are_found_on_read_and_by_verify(tmp_path, capsys):
    recs = _store(tmp_path / "s")
    assert main(["features", "verify", str(tmp_path / "s")]) == 0
    assert "5 records, 5 checksums match" in capsys.readouterr().out
    from imagebert.data.store import _drop_reader

    _drop_reader(str((tmp_path / "s").resolve()))
    _flip_byte_inside(tmp_path / "s", recs[2].features.astype("<f2").tobytes()[:64])
    store = FeatureStore(tmp_path / "s")
    with pytest.raises(CorruptRecordError, match="checksum mismatch") as e:
        store["im2"]
    assert e.value.record == "im2"
    assert store["im1"].image_id == "im1"  # the others still read
    with pytest.raises(CorruptRecordError):
        list(store)
    assert main(["features", "verify", str(tmp_path / "s")]) == 1
    captured = capsys.readouterr()
    assert "1 DAMAGED" in captured.out and "im2" in captured.err


def test_store_written_before_checksums_still_opens_and_verify_says_so(tmp_path, capsys):
    recs = _store(tmp_path / "old")
    env = lmdb.open(str(tmp_path / "old"), subdir=True)
    with env.begin(write=True) as txn:  # rewrite as the old format: no trailer, no flag, no meta key
        for r in recs:
            key = REC_PREFIX + r.image_id.encode()
            value = bytearray(txn.get(key))[:-8]
            value[5] &= ~8
            txn.put(key, bytes(value))
        meta = json.loads(txn.get(META_KEY))
        del meta["checksums"]
        txn.put(META_KEY, json.dumps(meta).encode())
        assert txn.get(COMPLETE_KEY) is not None
    env.close()
    store = FeatureStore(tmp_path / "old")
    np.testing.assert_array_equal(store["im3"].features, recs[3].features.astype(np.float16))
    result = verify_store(tmp_path / "old")
    assert result["ok"] and result["without_checksum"] == 5 and result["verified"] == 0
    assert main(["features", "verify", str(tmp_path / "old")]) == 0
    assert "without a checksum" in capsys.readouterr().out
    assert "none" in store.info()["checksums"]
    store.close()
    with FeatureStoreWriter(tmp_path / "old") as w:  # resuming an old store adds checksummed records
        w.add(_rec("new", seed=9))
    result = verify_store(tmp_path / "old")
    assert result["ok"] and (result["verified"], result["without_checksum"]) == (1, 5)


def test_truncated_data_mdb_is_an_error_not_a_bus_error(tmp_path):
    recs = [_rec(f"t{i}", n=50, d=512, seed=i) for i in range(30)]  # ~1.5 MB
    with FeatureStoreWriter(tmp_path / "s") as w:
        for r in recs:
            w.add(r)
    f = tmp_path / "s" / "data.mdb"
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size // 2)
    for argv in (["features", "info", str(tmp_path / "s")], ["features", "verify", str(tmp_path / "s")]):
        code = f"import sys; from imagebert.cli import main; sys.exit(main({argv!r}))"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (proc.returncode, proc.stderr)
        assert "truncated" in proc.stderr and proc.stderr.count("\n") == 1


# ------------------------------------------------------------------------------------------- item 2: refusal


def test_cli_import_refuses_an_existing_store_without_resume_or_overwrite(tmp_path, capsys):
    imgs = [make_image(f"r{k}", seed=k) for k in range(3)]
    src = write_tsv(tmp_path / "a.tsv", [butd_row(i) for i in imgs], BUTD_FIELDS)
    base = ["features", "import", "--format", "butd-tsv", str(src), "--out", str(tmp_path / "s")]
    assert main(base) == 0
    capsys.readouterr()
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err and str(tmp_path / "s") in err
    assert main([*base, "--resume"]) == 0
    assert "3 already present" in capsys.readouterr().out
    assert main([*base, "--overwrite"]) == 0
    assert "imported 3 images" in capsys.readouterr().out
    assert FeatureStore(tmp_path / "s").info()["import_runs"] == 1  # a fresh store, not a third run
    with pytest.raises(SystemExit):  # argparse: not both
        main([*base, "--resume", "--overwrite"])
