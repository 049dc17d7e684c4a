"""The ImageNet class table ships as a data file and loads into the same public name."""

from __future__ import annotations

from importlib import resources

from imagebert.lait import imagenet_classes as ic


def test_names_load_from_the_packaged_text_file():
    text = resources.files("imagebert.lait").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) == 1000 and tuple(lines) == ic.IMAGENET_CLASSES == ic.load_imagenet_classes()
    assert ic.IMAGENET_CLASSES[0] == "tench" and ic.IMAGENET_CLASSES[999] == "toilet paper"
    assert ic.IMAGENET_CLASSES[207] == "Golden Retriever" and ic.IMAGENET_CLASSES[504] == "coffee mug"
    source = resources.files("imagebert.lait").joinpath("imagenet_classes.py").read_text(encoding="utf-8")
    assert len(source.splitlines()) < 60  # a loader, not a 1,000-line table typed as code
