"""One EfficientNet-Lite0 loader and one preprocessing rule; the photo classifier's inputs are unchanged."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from imagebert.runtime.backbone import (
    EfficientNetLite0Backbone,
    EfficientNetLite0Classifier,
    load_efficientnet_lite0,
    pil_to_batch,
    preprocess,
)

SAMPLES = Path(matplotlib.get_data_path()) / "sample_data"


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_preprocessing_rule():
    x = torch.tensor([0.0, 127.0, 255.0]).view(1, 3, 1, 1)
    assert preprocess(x).flatten().tolist() == pytest.approx([-127 / 128, 0.0, 1.0])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        preprocess(torch.zeros(3, 8, 8))
    batch = pil_to_batch([Image.new("RGB", (10, 20), (1, 2, 3))], side=32)
    assert batch.shape == (1, 3, 32, 32) and batch[0, :, 0, 0].tolist() == [1.0, 2.0, 3.0]


@torch.no_grad()
def test_trunk_and_classifier_share_weights_and_the_photo_features_are_bit_identical():
    from imagebert.extraction.backbone import EfficientNetLite0Backbone as ExtractionBackbone
    from imagebert.lait.photoclf import INPUT_SIDE, PhotoFeatures

    assert ExtractionBackbone is EfficientNetLite0Backbone  # one class, re-exported
    images = [Image.open(SAMPLES / n).convert("RGB") for n in ("grace_hopper.jpg", "logo2.png")]
    x = pil_to_batch(images, INPUT_SIDE)
    trunk, clf = EfficientNetLite0Backbone(), EfficientNetLite0Classifier()
    assert not trunk.training and not any(p.requires_grad for p in trunk.parameters())
    # the rule the photo classifier was trained on, written out: (x - 127) / 128 into the raw network
    raw = load_efficientnet_lite0()
    expected = raw.extract_features((x - 127.0) / 128.0).mean(dim=(2, 3)).numpy()
    got = PhotoFeatures("cpu")(images)[:, :1280]
    assert np.array_equal(expected, got)
    features = trunk(x)
    assert features.shape == (2, 1280, INPUT_SIDE // 32, INPUT_SIDE // 32)
    logits = clf(x)
    assert logits.shape == (2, 1000)
    top = int(logits[0].argmax())
    from imagebert.lait.imagenet_classes import IMAGENET_CLASSES

    assert IMAGENET_CLASSES[top] == "military uniform"  # Grace Hopper in uniform
