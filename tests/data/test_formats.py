from __future__ import annotations

import json

import numpy as np
import pytest

from imagebert.cli import main
from imagebert.data import BoxSelection, FeatureStore, import_features
from imagebert.errors import InputError

from .helpers import (
    BUTD_FIELDS,
    LXMERT_FIELDS,
    b64,
    butd_row,
    lxmert_row,
    make_image,
    write_hdf5,
    write_npz_butd,
    write_npz_uniter,
    write_tsv,
)

IMGS = [make_image(str(1000 + i), n=10 + i, seed=i) for i in range(5)]


def assert_same(store: FeatureStore, img: dict, classes: bool) -> None:
    r = store[img["image_id"]]
    np.testing.assert_allclose(r.features, img["features"], rtol=1e-3, atol=2e-3)  # fp32 -> fp16
    np.testing.assert_array_equal(r.boxes, img["boxes"])
    assert (r.image_width, r.image_height) == (img["w"], img["h"])
    if classes:
        np.testing.assert_array_equal(r.class_ids, img["objects_id"])
        np.testing.assert_array_equal(r.class_confidences, img["objects_conf"])
    else:
        assert r.class_ids is None


@pytest.mark.parametrize("fmt", ["butd-tsv", "lxmert-tsv", "npz-butd", "hdf5"])
def test_round_trip_each_format(tmp_path, fmt):
    if fmt == "butd-tsv":
        src = [write_tsv(tmp_path / "a.tsv", [butd_row(i) for i in IMGS[:3]], BUTD_FIELDS),
               write_tsv(tmp_path / "b.tsv", [butd_row(i) for i in IMGS[3:]], BUTD_FIELDS)]  # fmt: skip
    elif fmt == "lxmert-tsv":
        src = [write_tsv(tmp_path / "a.tsv", [lxmert_row(i) for i in IMGS], LXMERT_FIELDS)]
    elif fmt == "npz-butd":
        for i in IMGS:
            write_npz_butd(tmp_path / "npz", i)
        src = [tmp_path / "npz"]
    else:
        src = [write_hdf5(tmp_path / "f.h5", IMGS)]
    report = import_features(fmt, src, tmp_path / "store", allow_pickle=(fmt == "npz-butd"))
    assert report.added == 5
    store = FeatureStore(tmp_path / "store")
    assert len(store) == 5 and store.feature_dim == 32
    for img in IMGS:
        assert_same(store, img, classes=fmt != "butd-tsv")


def test_npz_uniter_sizes_and_soft_labels(tmp_path):
    for i in IMGS[:2]:
        write_npz_uniter(tmp_path / "u", i)
    import_features("npz-uniter", [tmp_path / "u"], tmp_path / "norm")
    r = FeatureStore(tmp_path / "norm")[IMGS[0]["image_id"]]
    img = IMGS[0]
    assert (r.image_width, r.image_height) == (1, 1)
    np.testing.assert_allclose(r.boxes, img["boxes"] / [img["w"], img["h"], img["w"], img["h"]], rtol=1e-5)
    assert r.class_probs.shape == (10, 1600)  # background column dropped
    np.testing.assert_array_equal(r.class_ids, img["soft_labels"][:, 1:].astype(np.float16).argmax(1))
    sizes = {x["image_id"]: (x["w"], x["h"]) for x in IMGS}
    import_features("npz-uniter", [tmp_path / "u"], tmp_path / "px", image_sizes=sizes)
    r = FeatureStore(tmp_path / "px")[img["image_id"]]
    assert (r.image_width, r.image_height) == (640, 480)
    np.testing.assert_allclose(r.boxes, img["boxes"], rtol=1e-4)


def test_pickled_info_refused_by_default(tmp_path):
    write_npz_butd(tmp_path / "npz", IMGS[0])
    with pytest.raises(InputError, match="pickled.*--allow-pickle") as e:
        import_features("npz-butd", [tmp_path / "npz"], tmp_path / "s")
    assert e.value.field == "info" and "1000.npz" in str(e.value)
    with pytest.raises(InputError, match="incomplete"):
        FeatureStore(tmp_path / "s")


def test_box_selection_on_import(tmp_path):
    src = write_tsv(tmp_path / "a.tsv", [lxmert_row(i) for i in IMGS], LXMERT_FIELDS)
    import_features("lxmert-tsv", [src], tmp_path / "s", box_selection=BoxSelection(top_n=5))
    store = FeatureStore(tmp_path / "s")
    for img in IMGS:
        r = store[img["image_id"]]
        assert r.num_boxes == 5
        assert r.class_confidences.min() >= np.sort(img["objects_conf"])[-5]


def test_interrupted_import_resumes(tmp_path):
    src = write_tsv(tmp_path / "a.tsv", [butd_row(i) for i in IMGS], BUTD_FIELDS)
    first = import_features("butd-tsv", [src], tmp_path / "s", limit=2)
    assert first.added == 2
    with pytest.raises(InputError, match="incomplete"):
        FeatureStore(tmp_path / "s")
    second = import_features("butd-tsv", [src], tmp_path / "s")
    assert (second.added, second.already_present) == (3, 2)
    assert len(FeatureStore(tmp_path / "s")) == 5


def _corrupt_rows(tmp_path):
    """One bad row per failure mode, each with the field its error must name."""
    good = [butd_row(i) for i in IMGS]
    cases = {}
    r = dict(good[0])
    r["features"] = r["features"][: len(r["features"]) // 2]  # cut mid-row: bytes no longer whole floats
    cases["truncated"] = ("\t".join(str(r[f]) for f in BUTD_FIELDS[:5]), "features", "truncated_row")
    r = dict(good[1])
    r["boxes"] = b64(IMGS[1]["boxes"][:-1])
    cases["count"] = (r, "boxes", "count_mismatch")
    r = dict(good[2])
    r["features"] = r["features"][:-4] + "@@@="
    cases["base64"] = (r, "features", "bad_base64")
    r = dict(good[3])
    r["features"] = b64(IMGS[3]["features"])[:-8] + "AAAA"  # 3 bytes short: not whole float32s
    cases["b64len"] = (r, "features", "bad_base64")
    f = IMGS[4]["features"].copy()
    f[1, 1] = np.nan
    r = dict(good[4])
    r["features"] = b64(f)
    cases["nan"] = (r, "features", "non_finite")
    r = dict(good[0])
    r["num_boxes"] = "ten"
    cases["int"] = (r, "num_boxes", "bad_value")
    return cases


@pytest.mark.parametrize("case", ["truncated", "count", "base64", "b64len", "nan", "int"])
def test_corrupt_tsv_rows_name_file_line_field(tmp_path, case):
    row, field, _kind = _corrupt_rows(tmp_path)[case]
    path = tmp_path / "bad.tsv"
    write_tsv(path, [butd_row(IMGS[1])], BUTD_FIELDS) if case != "count" else write_tsv(
        path, [butd_row(IMGS[0])], BUTD_FIELDS
    )
    with open(path, "a") as fh:
        fh.write((row if isinstance(row, str) else "\t".join(str(row[k]) for k in BUTD_FIELDS)) + "\n")
    with pytest.raises(InputError) as e:
        import_features("butd-tsv", [path], tmp_path / "s")
    assert e.value.path == str(path) and e.value.record == 2 and e.value.field == field
    assert "bad.tsv" in str(e.value) and f"field '{field}'" in str(e.value)


def test_duplicate_ids_and_width_against_existing_store(tmp_path):
    path = write_tsv(
        tmp_path / "d.tsv", [butd_row(IMGS[0]), butd_row(IMGS[1]), butd_row(IMGS[0])], BUTD_FIELDS
    )
    with pytest.raises(InputError, match="duplicate") as e:
        import_features("butd-tsv", [path], tmp_path / "s")
    assert (e.value.record, e.value.field) == (3, "image_id")
    import_features(
        "butd-tsv", [write_tsv(tmp_path / "ok.tsv", [butd_row(IMGS[0])], BUTD_FIELDS)], tmp_path / "w"
    )
    wide = make_image("77", d=64)
    with pytest.raises(InputError, match="width 64 does not match the store's 32") as e:
        import_features(
            "butd-tsv", [write_tsv(tmp_path / "wide.tsv", [butd_row(wide)], BUTD_FIELDS)], tmp_path / "w"
        )
    assert e.value.field == "features" and e.value.record == 1


def test_npz_count_mismatch_and_unreadable(tmp_path):
    write_npz_butd(tmp_path / "n", IMGS[0], num_bbox=7)
    with pytest.raises(InputError, match="num_bbox=7") as e:
        import_features("npz-butd", [tmp_path / "n"], tmp_path / "s", allow_pickle=True)
    assert e.value.field == "x"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "9.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(InputError, match="unreadable") as e:
        import_features("npz-butd", [tmp_path / "m"], tmp_path / "s2")
    assert e.value.record == "9.npz"


def test_skip_bad_counts_and_rejects(tmp_path):
    cases = _corrupt_rows(tmp_path)
    path = tmp_path / "mixed.tsv"
    extra = make_image("2000", n=10 + 5, seed=9)
    lines = ["\t".join(str(butd_row(extra)[k]) for k in BUTD_FIELDS)]
    for row, _field, _kind in cases.values():
        lines.append(row if isinstance(row, str) else "\t".join(str(row[k]) for k in BUTD_FIELDS))
    lines.append(lines[0])  # duplicate of an image added in this run
    path.write_text("\n".join(lines) + "\n")
    rejects = tmp_path / "rej.jsonl"
    code = main(["features", "import", "--format", "butd-tsv", str(path), "--out", str(tmp_path / "s"),
                 "--skip-bad", "--rejects", str(rejects)])  # fmt: skip
    assert code == 0
    store = FeatureStore(tmp_path / "s")
    assert store.ids() == ["2000"]
    bad = [json.loads(x) for x in rejects.read_text().splitlines()]
    kinds = sorted(b["reason"] for b in bad)
    expected = sorted([k for _r, _f, k in cases.values()] + ["duplicate_id"])
    assert kinds == expected
    assert all(b["raw"] for b in bad) and {b["record"] for b in bad} == set(range(2, 2 + len(cases) + 1))


def test_cli_import_info_and_errors(tmp_path, capsys):
    src = write_tsv(tmp_path / "a.tsv", [lxmert_row(i) for i in IMGS], LXMERT_FIELDS)
    out = tmp_path / "s"
    assert main(["features", "import", "--format", "lxmert-tsv", str(src), "--out", str(out), "--min-conf", "0.5",
                 "--min-boxes", "2", "--max-boxes", "6"]) == 0  # fmt: skip
    assert "imported 5 images" in capsys.readouterr().out
    assert main(["features", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "feature_dim" in text and "32" in text and "5/5 images" in text and "boxes_per_image" in text
    assert main(["features", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["images"] == 5 and 2 <= info["boxes_per_image"]["min"] <= info["boxes_per_image"]["max"] <= 6
    assert info["class_distributions"].startswith("0/5")
    write_npz_butd(tmp_path / "npz", IMGS[0])
    assert main(["features", "import", "--format", "npz-butd", str(tmp_path / "npz"), "--out",
                 str(tmp_path / "p")]) == 2  # fmt: skip
    assert "--allow-pickle" in capsys.readouterr().err
    assert main(["features", "info", str(tmp_path / "p")]) == 2
    assert "re-run" in capsys.readouterr().err
    assert main(["features", "import", "--format", "npz-butd", str(tmp_path / "npz"), "--out",
                 str(tmp_path / "p"), "--allow-pickle"]) == 2  # fmt: skip
    assert "--resume" in capsys.readouterr().err  # the interrupted store is not reused without asking
    assert main(["features", "import", "--format", "npz-butd", str(tmp_path / "npz"), "--out",
                 str(tmp_path / "p"), "--allow-pickle", "--resume"]) == 0  # fmt: skip
    assert FeatureStore(tmp_path / "p")[IMGS[0]["image_id"]].class_ids is not None


def test_tsv_header_quotes_and_oversized_rows(tmp_path, monkeypatch):
    import imagebert.data.formats as formats

    path = tmp_path / "h.tsv"
    row = butd_row(IMGS[0])
    row["image_id"] = "quoted id"
    write_tsv(path, [dict(zip(BUTD_FIELDS, BUTD_FIELDS)), row], BUTD_FIELDS)  # header row, then a row
    with open(path, "a") as fh:
        fh.write('"4242"\t' + "\t".join(str(butd_row(IMGS[1])[k]) for k in BUTD_FIELDS[1:]) + "\n")
    import_features("butd-tsv", [path], tmp_path / "s")
    assert FeatureStore(tmp_path / "s").ids() == ["4242", "quoted id"]
    monkeypatch.setattr(formats, "MAX_LINE_BYTES", 1000)
    with pytest.raises(InputError, match="longer than 1000 bytes") as e:
        import_features("butd-tsv", [path], tmp_path / "s2")
    assert e.value.record == 2
    report = import_features("butd-tsv", [path], tmp_path / "s3", skip_bad=True, allow_empty=True)
    assert report.skipped == {"too_large": 2} and report.added == 0


def test_keyboard_interrupt_leaves_resumable_store(tmp_path, monkeypatch):
    import imagebert.data.formats as formats

    src = write_tsv(tmp_path / "a.tsv", [butd_row(i) for i in IMGS], BUTD_FIELDS)
    real, calls = formats.parse_butd_row, []

    def flaky(row, path, line):
        calls.append(line)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(row, path, line)

    monkeypatch.setattr(formats, "parse_butd_row", flaky)
    with pytest.raises(KeyboardInterrupt):
        import_features("butd-tsv", [src], tmp_path / "s")
    monkeypatch.setattr(formats, "parse_butd_row", real)
    assert main(["features", "info", str(tmp_path / "s")]) == 2
    again = import_features("butd-tsv", [src], tmp_path / "s")
    assert (again.already_present, again.added) == (2, 3)
    store = FeatureStore(tmp_path / "s")
    assert store.ids() == sorted(i["image_id"] for i in IMGS) and store.info()["import_runs"] == 2


def test_hdf5_missing_dataset_and_cli_selection_flags(tmp_path, capsys):
    import h5py

    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("42")
        g.create_dataset("boxes", data=IMGS[0]["boxes"])
    with pytest.raises(InputError, match="'features' missing") as e:
        import_features("hdf5", [path], tmp_path / "s")
    assert (e.value.record, e.value.field) == ("42", "features") and "f.h5" in str(e.value)
    assert main(["features", "import", "--format", "hdf5", str(path), "--out", str(tmp_path / "t"),
                 "--max-boxes", "5"]) == 2  # fmt: skip
    assert "--min-conf" in capsys.readouterr().err
