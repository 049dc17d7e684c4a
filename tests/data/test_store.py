from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from imagebert.data import BoxSelection, FeatureStore, FeatureStoreWriter, RegionRecord
from imagebert.errors import InputError


def rec(image_id: str, n: int = 8, d: int = 16, seed: int = 0, classes: bool = True) -> RegionRecord:
    rng = np.random.default_rng(seed)
    return RegionRecord(
        image_id,
        rng.standard_normal((n, d)).astype(np.float32),
        np.sort(rng.uniform(0, 300, (n, 2, 2)), axis=1)
        .reshape(n, 4)
        .astype(np.float32),  # x1 <= x2, y1 <= y2
        640,
        480,
        rng.integers(0, 1600, n) if classes else None,
        rng.uniform(0, 1, n).astype(np.float32) if classes else None,
        rng.dirichlet(np.ones(5), n).astype(np.float32) if classes else None,
    )


def build(path, n_images: int = 20, **kw) -> list[RegionRecord]:
    records = [rec(f"img{i:03d}", n=4 + i % 5, seed=i) for i in range(n_images)]
    with FeatureStoreWriter(path, **kw) as w:
        for r in records:
            w.add(r)
    return records


def test_round_trip_fp16_and_fp32(tmp_path):
    records = build(tmp_path / "s16")
    store = FeatureStore(tmp_path / "s16")
    assert len(store) == 20 and store.feature_dim == 16
    for r in records:
        got = store[r.image_id]
        assert got.features.dtype == np.float16
        np.testing.assert_allclose(got.features, r.features, rtol=1e-3, atol=1e-3)
        np.testing.assert_array_equal(got.boxes, r.boxes)
        np.testing.assert_array_equal(got.class_ids, r.class_ids)
        np.testing.assert_array_equal(got.class_confidences, r.class_confidences)
        np.testing.assert_allclose(got.class_probs, r.class_probs, atol=1e-3)
        assert (got.image_width, got.image_height) == (640, 480)
        got.features[0, 0] = 1  # returned arrays are writable (collators may modify them)
    build(tmp_path / "s32", dtype="float32")
    exact = FeatureStore(tmp_path / "s32")["img003"]
    np.testing.assert_array_equal(exact.features, records[3].features)


def test_missing_optional_fields_and_lookup(tmp_path):
    with FeatureStoreWriter(tmp_path / "s") as w:
        w.add(rec("a", classes=False))
    store = FeatureStore(tmp_path / "s")
    got = store["a"]
    assert got.class_ids is None and got.class_confidences is None and got.class_probs is None
    assert "a" in store and "b" not in store and 3 not in store
    with pytest.raises(KeyError, match="'b'"):
        store["b"]


def test_ids_and_sequential_stream(tmp_path):
    records = build(tmp_path / "s")
    store = FeatureStore(tmp_path / "s")
    assert store.ids() == sorted(r.image_id for r in records)
    assert [r.image_id for r in store] == store.ids()


def test_box_selection_rules():
    conf = np.array([0.1, 0.9, 0.3, 0.95, 0.05, 0.5], dtype=np.float32)
    assert BoxSelection(top_n=3).indices(6, conf).tolist() == [1, 3, 5]
    assert BoxSelection(top_n=3).indices(6, None).tolist() == [0, 1, 2]
    assert BoxSelection().top_n == 100
    thr = BoxSelection(min_confidence=0.2, min_boxes=2, max_boxes=3)
    assert thr.indices(6, conf).tolist() == [1, 3, 5]  # 4 pass, clipped to 3
    assert BoxSelection(min_confidence=0.92, min_boxes=2, max_boxes=5).indices(6, conf).tolist() == [1, 3]
    with pytest.raises(ValueError):
        BoxSelection(top_n=5, min_confidence=0.2)


def test_box_selection_at_import_and_read(tmp_path):
    r = rec("x", n=10)
    with FeatureStoreWriter(tmp_path / "s", box_selection=BoxSelection(top_n=4)) as w:
        w.add(r)
    got = FeatureStore(tmp_path / "s")["x"]
    keep = np.sort(np.argsort(-r.class_confidences)[:4])
    np.testing.assert_array_equal(got.boxes, r.boxes[keep])
    np.testing.assert_array_equal(got.class_ids, r.class_ids[keep])
    with FeatureStoreWriter(tmp_path / "full") as w:
        w.add(r)
    read_sel = FeatureStore(
        tmp_path / "full", box_selection=BoxSelection(min_confidence=0.5, min_boxes=1, max_boxes=3)
    )
    out = read_sel["x"]
    assert out.num_boxes == min(3, max(1, int((r.class_confidences >= 0.5).sum())))
    assert (out.class_confidences >= np.sort(r.class_confidences)[-out.num_boxes] - 1e-7).all()


def test_incomplete_store_refused_then_resumed(tmp_path):
    path = tmp_path / "s"
    with pytest.raises(RuntimeError), FeatureStoreWriter(path) as w:
        w.add(rec("a"))
        w.flush()
        raise RuntimeError("killed")
    with pytest.raises(InputError, match="incomplete.*re-run"):
        FeatureStore(path)
    with FeatureStoreWriter(path) as w:
        assert "a" in w and not w.added_this_run("a")
        w.add(rec("b", seed=1))
        assert w.added_this_run("b")
    store = FeatureStore(path)
    assert store.ids() == ["a", "b"] and store.info()["import_runs"] == 2
    with pytest.raises(InputError, match="no feature store"):
        FeatureStore(tmp_path / "nothing")


def test_duplicate_width_nonfinite_and_bad_ids(tmp_path):
    with FeatureStoreWriter(tmp_path / "s") as w:
        w.add(rec("a"))
        with pytest.raises(InputError, match="duplicate") as e:
            w.add(rec("a"))
        assert e.value.field == "image_id"
        with pytest.raises(InputError, match="width 32 does not match") as e:
            w.add(rec("b", d=32))
        assert e.value.field == "features"
        bad = rec("c")
        bad.features[2, 3] = np.nan
        with pytest.raises(InputError, match="NaN") as e:
            w.add(bad)
        assert e.value.field == "features"
        bad = rec("c")
        bad.boxes[0, 0] = np.inf
        with pytest.raises(InputError) as e:
            w.add(bad)
        assert e.value.field == "boxes"
        for bad_id in ("../etc/passwd", "a/b", "", "x" * 300, "a\x00b"):
            with pytest.raises(InputError, match="image id"):
                w.add(rec(bad_id))
    with pytest.raises(InputError, match="feature_dim") as e:
        FeatureStoreWriter(tmp_path / "s", feature_dim=64)
    assert e.value.field == "feature_dim"


def test_map_size_grows(tmp_path):
    build(tmp_path / "s", n_images=30, map_size=1 << 15)
    assert len(FeatureStore(tmp_path / "s")) == 30
    assert sum(1 for _ in FeatureStore(tmp_path / "s")) == 30


def test_store_pickles_without_a_handle(tmp_path):
    build(tmp_path / "s", n_images=3)
    store = FeatureStore(tmp_path / "s")
    store["img001"]
    clone = pickle.loads(pickle.dumps(store))
    assert clone["img002"].image_id == "img002"


class _Ids(Dataset):
    def __init__(self, store: FeatureStore) -> None:
        self.store, self.ids = store, store.ids()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        r = self.store[self.ids[i]]
        return r.image_id, float(r.features.astype(np.float32).sum()), os.getpid()


@pytest.mark.slow
def test_dataloader_workers_read_each_record_once(tmp_path):
    build(tmp_path / "s", n_images=40)
    store = FeatureStore(tmp_path / "s")
    expected = {
        r.image_id: float(r.features.astype(np.float32).sum()) for r in store
    }  # parent holds the env open
    loader = DataLoader(_Ids(store), batch_size=3, num_workers=2, collate_fn=lambda b: b,
                        multiprocessing_context="fork")  # fmt: skip
    seen, pids = [], set()
    for batch in loader:
        for image_id, total, pid in batch:
            seen.append(image_id)
            pids.add(pid)
            assert total == pytest.approx(expected[image_id], rel=1e-6)
    assert sorted(seen) == sorted(expected) and len(seen) == 40
    assert len(pids) == 2 and os.getpid() not in pids
    assert torch.utils.data.get_worker_info() is None


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_num_boxes_reads_the_count_from_the_header(tmp_path, dtype):
    """The count length bucketing reads is the one a full read returns, under every selection rule and for
    records with and without class ids / confidences (the confidence column's offset depends on both)."""
    records = [rec(f"c{i}", n=3 + 4 * i, seed=i) for i in range(4)] + [
        rec(f"n{i}", n=5 + 3 * i, seed=10 + i, classes=False) for i in range(3)
    ]
    r = records[2]  # confidences without class ids
    records.append(RegionRecord("conf_only", r.features, r.boxes, 640, 480, None, r.class_confidences, None))
    with FeatureStoreWriter(tmp_path / "s", dtype=dtype) as w:
        for r in records:
            w.add(r)
    selections = [None, BoxSelection(top_n=6), BoxSelection(min_confidence=0.4, min_boxes=2, max_boxes=7)]
    for sel in selections:
        store = FeatureStore(tmp_path / "s", box_selection=sel)
        for r in records:
            assert store.num_boxes(r.image_id) == store[r.image_id].num_boxes, (sel, r.image_id)
    counts = {
        FeatureStore(tmp_path / "s", box_selection=selections[2]).num_boxes(r.image_id) for r in records
    }
    assert len(counts) > 2  # the threshold rule really read confidences, not a constant
    with pytest.raises(KeyError, match="nope.*feature store"):
        FeatureStore(tmp_path / "s").num_boxes("nope")
