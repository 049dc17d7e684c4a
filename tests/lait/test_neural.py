"""The real neural feature path, once, small: EfficientNet-Lite0 labels + MiniLM similarity."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
from PIL import Image

from imagebert.lait import load_lait_config, run_lait
from imagebert.lait.config import ImageConfig
from imagebert.lait.imagenet_classes import IMAGENET_CLASSES
from imagebert.lait.images import heuristic_racy, heuristic_type
from imagebert.lait.neural import get_neural_features
from imagebert.lait.synthetic import ENGLISH, WarcBuilder, article, encode

# A real photograph shipped inside matplotlib's wheel (Grace Hopper in uniform).
HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def test_class_names_are_in_imagenet_order():
    assert len(IMAGENET_CLASSES) == 1000 and len(set(IMAGENET_CLASSES)) >= 998
    checks = {
        0: "tench",
        207: "Golden Retriever",
        281: "tabby cat",
        340: "zebra",
        504: "coffee mug",
        967: "espresso",
    }
    assert all(IMAGENET_CLASSES[i] == name for i, name in checks.items())


def test_heuristic_classifiers_keep_a_real_photo_and_reject_a_logo():
    data = Path(matplotlib.get_data_path()) / "sample_data"
    cfg = ImageConfig()
    for name, expected in (("grace_hopper.jpg", "normal"), ("logo2.png", "non_realistic")):
        thumb = Image.open(data / name).convert("RGB")
        thumb.thumbnail((256, 256), Image.Resampling.BILINEAR)
        assert heuristic_racy(cfg)(thumb)[0] == "normal"
        assert heuristic_type(cfg)(thumb)[0] == expected


def test_neural_features_on_a_real_photo(tmp_path):
    nf = get_neural_features("cpu")
    image = Image.open(HOPPER).convert("RGB")
    labels = nf.labels(image, 5)
    names = [IMAGENET_CLASSES[i] for i, _ in labels]
    assert names[0] == "military uniform" and "suit" in names[:3]
    related = nf.cross_features("A woman in a navy military uniform", labels)
    unrelated = nf.cross_features("Quarterly tax deadline for small companies", labels)
    assert related["label_similarity"] > unrelated["label_similarity"] + 0.2
    assert related["label_word_overlap"] > 0 == unrelated["label_word_overlap"]

    crawl = tmp_path / "crawl"
    crawl.mkdir()
    with WarcBuilder(crawl / "n.warc.gz") as w:
        fig = "<img src='/h.jpg' alt='{}' width='512' height='600'>"
        w.page(
            "http://n.org/1",
            article("A", ENGLISH, fig.format("An officer in a military uniform and bow tie")),
        )
        w.page(
            "http://n.org/2", article("B", ENGLISH, fig.format("Cheap flights to sunny islands this summer"))
        )
        w.image("http://n.org/h.jpg", encode(image))
    cfg = load_lait_config(
        None,
        [
            "scoring.neural=true",
            "images.type_classifier=none",
            "images.racy_classifier=none",
            "scoring.model=hand",  # the hand-set priors weigh the cross-modal features; the shipped scorer is text-only
            "scoring.min_score=0.5",
        ],
    )
    run_lait([crawl], tmp_path / "out", cfg, workers=1)
    rows = [json.loads(x) for x in (tmp_path / "out" / "captions.jsonl").read_text().splitlines()]
    assert [r["caption"] for r in rows] == ["An officer in a military uniform and bow tie"]
