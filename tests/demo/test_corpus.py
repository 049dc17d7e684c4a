"""The demo corpus: deterministic, cached, 5 true captions per image, all classes, real distractor pairs, and it
goes through `imagebert extract --boxes` and the Karpathy reader like a real dataset."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagebert.demo.baselines import bag_of_words_scores, caption_terms, demo_image_terms
from imagebert.demo.corpus import CLASSES, COLORS, build_demo_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_demo_corpus(tmp_path_factory.mktemp("demo"), num_train=40, num_val=6, num_test=14, seed=3)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(root).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def _images(corpus) -> list[dict]:
    return json.loads(corpus.karpathy_json.read_text())["images"]


def test_deterministic_and_cached(corpus, tmp_path: Path) -> None:
    again = build_demo_corpus(tmp_path / "b", num_train=40, num_val=6, num_test=14, seed=3)
    assert _digest(again.root) == _digest(corpus.root)
    other = build_demo_corpus(tmp_path / "c", num_train=40, num_val=6, num_test=14, seed=4)
    assert _digest(other.root) != _digest(corpus.root)
    # cached: a second call with the same parameters writes nothing
    stamp = {f: f.stat().st_mtime_ns for f in again.root.rglob("*") if f.is_file()}
    build_demo_corpus(tmp_path / "b", num_train=40, num_val=6, num_test=14, seed=3)
    assert stamp == {f: f.stat().st_mtime_ns for f in again.root.rglob("*") if f.is_file()}
    # a missing image or other parameters trigger a rebuild
    (again.images_dir / "demo_000000.png").unlink()
    build_demo_corpus(tmp_path / "b", num_train=40, num_val=6, num_test=14, seed=3)
    assert (again.images_dir / "demo_000000.png").is_file()
    # a smaller rebuild in the same folder leaves no stale images behind
    small = build_demo_corpus(tmp_path / "b", num_train=3, num_val=1, num_test=1, seed=3)
    assert len(list(small.images_dir.iterdir())) == 5
    with pytest.raises(ValueError):
        build_demo_corpus(tmp_path / "d", 0, 0, 0, 0)


def test_karpathy_json_shape_and_reader(corpus) -> None:
    from imagebert.data.captions import read_karpathy_json

    images = _images(corpus)
    assert Counter(e["split"] for e in images) == {"train": 40, "val": 6, "test": 14}
    sentids = []
    for e in images:
        assert {"filename", "imgid", "split", "sentences", "sentids"} <= set(e)
        assert len(e["sentences"]) == 5 and len({s["raw"] for s in e["sentences"]}) == 5
        for s in e["sentences"]:
            assert set(s) == {"raw", "tokens", "sentid", "imgid"} and s["imgid"] == e["imgid"]
            assert s["tokens"] == re.findall(r"[a-z0-9]+", s["raw"].lower())
        assert e["sentids"] == [s["sentid"] for s in e["sentences"]]
        sentids += e["sentids"]
        img = Image.open(corpus.images_dir / e["filename"])
        assert img.mode == "RGB" and img.size == (256, 256)
    assert len(set(sentids)) == len(sentids)
    caps = read_karpathy_json(corpus.karpathy_json)
    assert len(caps) == 5 * len(images) and caps[0].image_id == Path(images[0]["filename"]).stem


def test_classes_colours_counts_and_boxes(corpus) -> None:
    images = _images(corpus)
    objs = [o for e in images for o in e["objects"]]
    assert {o["cls"] for o in objs} == set(CLASSES)
    assert {o["color"] for o in objs} == set(COLORS)
    assert {o["size"] for o in objs} == {"small", "large"}
    assert {len(e["objects"]) for e in images} <= {2, 3, 4} and len({len(e["objects"]) for e in images}) >= 2
    text = " ".join(s["raw"] for e in images for s in e["sentences"])
    for word in ("left of", "right of", "above", "below", "two ", "corner", "small", "large"):
        assert word in text
    coco = json.loads(corpus.boxes_json.read_text())
    assert [c["name"] for c in coco["categories"]] == list(CLASSES)
    # each box holds its object's colour: the pixels nearest the nominal colour sit inside the box
    by_id = {e["imgid"]: e for e in images}
    for ann in coco["annotations"][:40]:
        e = by_id[ann["image_id"]]
        arr = np.asarray(Image.open(corpus.images_dir / e["filename"])).astype(int)
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 256 and y + h <= 256 and w > 5 and h > 5
        crop = arr[int(y) : int(y + h), int(x) : int(x + w)].reshape(-1, 3)
        dist = np.abs(crop - np.array(COLORS[ann["attributes"]["color"]])).sum(1)
        assert (dist < 60).mean() > 0.25


_REL = re.compile(
    r"(?:an?) (?:(?:small|large) )?(\w+) (\w+) (?:is |placed )?(to the left of|to the right of|above|below) "
    r"(?:an?) (?:(?:small|large) )?(\w+) (\w+)$"
)


def test_captions_are_true(corpus) -> None:
    checked = 0
    for e in _images(corpus):
        words = {o["cls"] for o in e["objects"]} | {o["color"] for o in e["objects"]} | {"small", "large"}
        for s in e["sentences"]:
            assert caption_terms(s["raw"]) <= words, s["raw"]
            m = _REL.search(s["raw"])
            if not m:
                continue
            ca, ka, rel, cb, kb = m.groups()
            a = [o for o in e["objects"] if (o["color"], o["cls"]) == (ca, ka)]
            b = [o for o in e["objects"] if (o["color"], o["cls"]) == (cb, kb)]
            assert a and b, s["raw"]
            if len(a) == 1 and len(b) == 1:
                (a,), (b,) = a, b
                ok = {"to the left of": a["cx"] < b["cx"], "to the right of": a["cx"] > b["cx"],
                      "above": a["cy"] < b["cy"], "below": a["cy"] > b["cy"]}[rel]  # fmt: skip
                assert ok, s["raw"]
                checked += 1
    assert checked > 50


def test_distractor_pairs_defeat_bag_of_words(corpus) -> None:
    images = _images(corpus)
    by_id = {e["imgid"]: e for e in images}
    pairs = {tuple(sorted((e["imgid"], e["pair"]))) for e in images if e["pair"] is not None}
    assert len(pairs) >= 8
    assert {by_id[a]["distractor"] for a, _ in pairs} == {"relation", "attribute"}
    terms = demo_image_terms(corpus.boxes_json)
    for a, b in pairs:
        ea, eb = by_id[a], by_id[b]
        assert ea["split"] == eb["split"]
        oa, ob = ea["objects"], eb["objects"]
        for key in ("cls", "color", "size"):
            assert Counter(o[key] for o in oa) == Counter(o[key] for o in ob)
        binding = Counter((o["cls"], o["color"]) for o in oa) != Counter((o["cls"], o["color"]) for o in ob)
        moved = [(o["cx"], o["cy"]) for o in oa] != [(o["cx"], o["cy"]) for o in ob]
        assert binding if ea["distractor"] == "attribute" else moved
        assert {s["raw"] for s in ea["sentences"]} != {s["raw"] for s in eb["sentences"]}
        caps = [s["raw"] for s in ea["sentences"] + eb["sentences"]]
        ta, tb = terms[Path(ea["filename"]).stem], terms[Path(eb["filename"]).stem]
        assert ta == tb
        scores = bag_of_words_scores(caps, [ta, tb])
        np.testing.assert_array_equal(scores[:, 0], scores[:, 1])  # words alone cannot tell the pair apart


def test_bag_of_words_scores() -> None:
    caps = ["two red stars above a blue circle", "a green heart", "a picture"]
    imgs = [{"star", "red", "circle", "blue"}, {"heart", "green", "small"}, {"star", "green"}]
    s = bag_of_words_scores(caps, imgs)
    assert s.shape == (3, 3) and s.dtype == np.float32
    assert s[0].tolist() == [4.0, -4.0, -2.0]  # 4 hits; 4 misses; star hits, red/blue/circle miss: 1 - 3
    assert s[1].argmax() == 1 and (s[2] == 0).all()
    assert caption_terms("three crosses and two diamonds") == {"cross", "diamond"}


def test_demo_store_through_extract(corpus, tmp_path: Path, monkeypatch) -> None:
    """The demo's store comes from `imagebert extract --boxes` exactly as a real dataset's would."""
    from imagebert.cli import main
    from imagebert.data.store import FeatureStore

    coco = json.loads(corpus.boxes_json.read_text())
    keep = {img["id"] for img in coco["images"][:4]}
    small = {
        "images": [i for i in coco["images"] if i["id"] in keep],
        "annotations": [a for a in coco["annotations"] if a["image_id"] in keep],
        "categories": coco["categories"],
    }
    (tmp_path / "boxes.json").write_text(json.dumps(small))
    args = ["extract", str(corpus.images_dir), "--boxes", str(tmp_path / "boxes.json"), "--out",
            str(tmp_path / "store"), "--image-size", "128", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    store = FeatureStore(tmp_path / "store")
    assert store.feature_dim == 1280 and len(store) == 4
    images = _images(corpus)[:4]
    for e in images:
        rec = store[Path(e["filename"]).stem]
        assert rec.num_boxes == len(e["objects"])
        assert [CLASSES[c] for c in rec.class_ids] == [o["cls"] for o in e["objects"]]
        np.testing.assert_allclose(rec.boxes, [o["box"] for o in e["objects"]])
    cats = json.loads((tmp_path / "store" / "categories.json").read_text())
    assert [c["name"] for c in cats["classes"]] == list(CLASSES)
