"""The shipped photo / non-photo filter on real photographs and rendered non-photos, and why the skin-tone rule
is off by default."""

from __future__ import annotations

import random

import numpy as np
import pytest
import skimage.data as sk
from PIL import Image

from imagebert.lait.config import ImageConfig
from imagebert.lait.images import heuristic_racy, heuristic_type, load_classifier
from imagebert.lait.photoclf import SHIPPED, PhotoModel, cross_validate, precision_recall
from imagebert.lait.photoset import augment, render_chart, render_clipart, render_screenshot


def _thumb(im: Image.Image) -> Image.Image:
    im = im.convert("RGB")
    im.thumbnail((256, 256), Image.Resampling.BILINEAR)  # what the pipeline hands the classifiers
    return im


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    rng = random.Random(12345)  # other crops and re-encodes than the training set's
    out = {}
    for name in ("chelsea", "coffee", "camera", "immunohistochemistry", "astronaut", "moon"):
        out[name] = _thumb(augment(Image.fromarray(getattr(sk, name)()), rng, photo=True)[0])
    out["motorcycle"] = _thumb(Image.fromarray(sk.stereo_motorcycle()[0]))
    out["camera_gray"] = _thumb(Image.fromarray(sk.camera()).convert("L"))
    return out


@pytest.fixture(scope="module")
def non_photos() -> dict[str, Image.Image]:
    # seeds far from the training set's (0..59)
    out = {f"chart{s}": _thumb(render_chart(90_000 + s)) for s in range(4)}
    out["screenshot"] = _thumb(render_screenshot(90_001))
    out["clipart"] = _thumb(render_clipart(90_002))
    return out


def test_shipped_classifier_keeps_real_photographs_and_rejects_rendered_charts(photos, non_photos):
    clf = load_classifier("learned", ImageConfig(), heuristic_type)
    kept = {n: clf(im)[0] for n, im in photos.items()}
    assert sum(v == "normal" for v in kept.values()) >= len(kept) - 1, kept
    assert kept["camera_gray"] == "normal" and kept["chelsea"] == "normal"  # grayscale photos are photos
    rejected = {n: clf(im)[0] for n, im in non_photos.items()}
    assert all(v == "non_photo" for v in rejected.values()), rejected
    # the batched path (used by the pipeline) agrees with the one-image path
    names = list(photos)[:3] + list(non_photos)[:3]
    images = [photos.get(n) or non_photos[n] for n in names]
    assert [x[0] for x in clf.batch(images)] == [{**kept, **rejected}[n] for n in names]


def test_old_rules_reject_real_photographs(photos):
    """Why the skin-tone rule is off and the palette rule is no longer the default (docs/lait.md)."""
    cfg = ImageConfig()
    assert heuristic_racy(cfg)(photos["chelsea"])[0] == "racy"  # a cat
    assert heuristic_type(cfg)(photos["camera_gray"])[0] == "non_realistic"  # at most 32 grays at 5 bits


def test_shipped_weights_carry_their_threshold_and_heldout_figures():
    m = PhotoModel.load(SHIPPED)
    assert 0 < m.threshold < 1 and m.weight.shape == (1286,)
    assert m.info["cv_recall"] >= 0.9 and m.info["cv_precision"] >= 0.95
    assert "chelsea" in m.info["photo_sources"]


def test_grouped_cross_validation_holds_out_whole_sources():
    rng = np.random.default_rng(0)
    groups = [f"p{i // 4}" for i in range(40)] + [f"n{i // 4}" for i in range(40)]
    y = np.array([1.0] * 40 + [0.0] * 40)
    x = np.concatenate([rng.normal(1, 1, (40, 5)), rng.normal(-1, 1, (40, 5))]).astype(np.float32)
    cv = cross_validate(x, y, groups, k=5)
    assert set(cv["per_source"]) == set(groups)
    assert cv["at_threshold"]["recall"] > 0.8
    assert precision_recall(np.array([0.9, 0.1, 0.8]), np.array([1, 1, 0]), 0.5) == {
        "precision": 0.5,
        "recall": 0.5,
        "photos": 2,
        "non_photos": 1,
        "photos_kept": 1,
        "non_photos_kept": 1,
    }
