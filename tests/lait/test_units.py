"""The pure step functions, one rule at a time."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from imagebert.cli import main
from imagebert.config_utils import ConfigError
from imagebert.errors import InputError
from imagebert.lait import Scorer, load_lait_config
from imagebert.lait.aggregate import group_images
from imagebert.lait.config import ImageConfig, PageConfig, TextConfig
from imagebert.lait.images import ImageReject, decode_image, dhash, hamming, heuristic_racy, load_classifier
from imagebert.lait.pages import PageReject, process_page
from imagebert.lait.scoring import DEFAULT_WEIGHTS, FEATURES, fit_logistic
from imagebert.lait.sources import decode_html
from imagebert.lait.synthetic import ENGLISH, encode, photo
from imagebert.lait.text import TextCleaner


def test_decode_html_charsets():
    text = "<p>Un café près de la gare</p>"
    assert decode_html(text.encode("cp1252"), "utf-8") == (text, "cp1252")  # wrong declaration
    assert decode_html(text.encode("utf-8"), "iso-8859-1")[0] == text  # valid UTF-8 wins
    meta = b"<meta charset='koi8-r'><p>" + "привет".encode("koi8_r") + b"</p>"
    assert "привет" in decode_html(meta, None)[0]
    assert decode_html(b"\xff\xfe" + "hi".encode("utf-16-le"))[0] == "hi"
    assert isinstance(decode_html(bytes(range(256)), "no-such-codec")[0], str)


def test_dominant_image_prefers_large_og_alt_and_skips_icons():
    html = (
        "<html><head><meta property='og:image' content='http://x.org/big.jpg'></head><body>"
        "<header><img src='/logo.png' width='200' height='200'></header>"
        f"<p>{ENGLISH}</p><a href='/ad'><img src='/ads/banner.jpg' width='728' height='300'></a>"
        "<img src='/pixel.gif' width='1' height='1'>"
        "<img src='http://x.org/big.jpg' alt='A heron standing in shallow water' width='800' height='600'>"
        "</body></html>"
    )
    res = process_page("http://x.org/page", html, PageConfig())
    assert res.image_url == "http://x.org/big.jpg"
    assert ("alt", "A heron standing in shallow water") in res.candidates
    with pytest.raises(PageReject, match="too_many_images"):
        process_page(
            "http://x.org/p", f"<p>{ENGLISH}</p>" + "<img src=a.jpg>" * 11, PageConfig(max_images_per_page=10)
        )
    # malformed markup still parses: unclosed tags, stray quotes
    res = process_page(
        "http://x.org/m", f"<p>{ENGLISH}<div><b><img src='a.jpg' alt='A red kite'><i></p></td>", PageConfig()
    )
    assert res.image_url == "http://x.org/a.jpg"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("DSC_0042", "filename_like"),
        ("sunset_beach_photo_final", "filename_like"),
        ("Visit www.example.com for more", "spam"),
        ("Amazing!!! look at this", "spam"),
        ("Image may contain: tree, sky", "boilerplate"),
        ("thumbnail", "boilerplate"),
        ("A casino on the strip at night", "banned_word"),
        ("Two dogs", "too_short"),
        ("word " * 41, "too_long"),
        ("Xqzt vrpl mnbw kkjh house", "high_oov"),
    ],
)
def test_text_rules(text, reason):
    assert TextCleaner(TextConfig()).check("alt", text) == reason


def test_text_keeps_a_normal_caption_and_thresholds_come_from_config():
    ok = TextCleaner(TextConfig()).check("alt", "  A man riding a horse along the beach — ")
    assert ok.text == "A man riding a horse along the beach" and ok.n_words == 8 and ok.oov_ratio == 0.0
    assert TextCleaner(TextConfig(min_words=9)).check("alt", ok.text) == "too_short"
    assert TextCleaner(TextConfig(banned_words=["horse"])).check("alt", ok.text) == "banned_word"
    assert TextCleaner(TextConfig(sources=["title"])).check("alt", ok.text) == "source_disabled"


def test_image_checks():
    cfg = ImageConfig()
    ok = decode_image(encode(photo(1, 500, 400)), cfg)
    assert (ok.width, ok.height) == (500, 400) and ok.jpeg[:2] == b"\xff\xd8"
    truncated = encode(photo(2))[:3000]
    with pytest.raises(ImageReject) as exc:
        decode_image(truncated, cfg)
    assert exc.value.reason == "undecodable"
    with pytest.raises(ImageReject) as exc:
        decode_image(encode(photo(3), "PNG"), ImageConfig(max_bytes=1000))
    assert exc.value.reason == "too_many_bytes"
    with pytest.raises(ImageReject) as exc:
        decode_image(encode(Image.new("RGB", (3000, 3000)), "PNG"), ImageConfig(max_pixels=1_000_000))
    assert exc.value.reason == "decompression_bomb"


def test_dhash_groups_near_duplicates_only():
    a, b = photo(7), photo(8)
    a_small = a.resize((200, 200))
    assert hamming(dhash(a), dhash(a_small)) <= 4 and hamming(dhash(a), dhash(b)) > 10
    ids = ["a", "a2", "b"]
    groups = group_images(ids, [dhash(a), dhash(a_small), dhash(b)], 4)
    assert groups["a"] == groups["a2"] != groups["b"]
    assert len(set(group_images(ids, [dhash(a), dhash(a_small), dhash(b)], -1).values())) == 3


def _user_classifier(cfg):  # a user's own model plugs in through "module:factory"
    return lambda image: ("pornographic", 0.99) if image.size[0] > 0 else ("normal", 1.0)


def test_pluggable_classifier():
    clf = load_classifier(f"{__name__}:_user_classifier", ImageConfig(), heuristic_racy)
    assert clf(photo(1)) == ("pornographic", 0.99)
    assert load_classifier("none", ImageConfig(), heuristic_racy)(photo(1))[0] == "normal"
    with pytest.raises(ValueError, match="package.module:factory"):
        load_classifier("nudenet", ImageConfig(), heuristic_racy)


def test_config_rejects_unknown_keys_and_yaml_roundtrip(tmp_path):
    with pytest.raises(ConfigError, match="images.min_sidez"):
        load_lait_config(None, ["images.min_sidez=3"])
    path = tmp_path / "c.yaml"
    path.write_text("text:\n  max_words: 12\n  banned_words: [foo]\n")
    cfg = load_lait_config(path, ["scoring.min_score=0.7"])
    assert cfg.text.max_words == 12 and cfg.text.banned_words == ["foo"] and cfg.scoring.min_score == 0.7
    assert cfg.images.min_side == 300


def test_shipped_default_config_matches_the_code():
    from pathlib import Path

    from imagebert.lait import LaitConfig

    path = Path(__file__).resolve().parents[2] / "configs" / "lait" / "default.yaml"
    assert load_lait_config(path) == LaitConfig()


def test_scorer_default_save_load(tmp_path):
    s = Scorer.default()
    assert list(s.weights) == [DEFAULT_WEIGHTS[f] for f in FEATURES]
    s.save(tmp_path / "s.safetensors")
    t = Scorer.load(tmp_path / "s.safetensors")
    assert np.array_equal(s.weights, t.weights) and t.feature_names == FEATURES and not t.neural
    x = np.array([[1, 0.0], [1, 1.0], [1, 0.1], [1, 0.9]])
    w = fit_logistic(x, np.array([0, 1, 0, 1.0]))
    assert w[1] > 0


def test_train_scorer_cli(tmp_path, capsys):
    for i in range(4):
        photo(i, 400, 400).save(tmp_path / f"im{i}.jpg")
    rows = [
        {"image": "im0.jpg", "text": "A calm lake under a pale blue sky", "related": 1},
        {
            "image": "im1.jpg",
            "text": "Green hills and a winding road at dusk",
            "related": 1,
            "source": "og_description",
        },
        {"image": "im2.jpg", "text": "Page 12 of 340 items 2019", "related": 0, "source": "surrounding"},
        {"image": "im3.jpg", "text": "Share 55 comments 10 likes", "related": 0, "source": "surrounding"},
    ]
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scorer.safetensors"
    assert main(["lait", "train-scorer", str(labels), "--out", str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["rows"] == 4 and metrics["heldout"] == "cross-validated, 2 folds"
    scorer = Scorer.load(out)
    assert scorer.weights.shape == (len(FEATURES),)
    assert scorer.threshold == pytest.approx(metrics["threshold"], abs=1e-6)  # stored for the run to use
    labels.write_text(json.dumps({"image": "im0.jpg", "text": "x"}) + "\n")
    with pytest.raises(InputError, match="line/record 1, field 'related'"):
        from imagebert.lait.train import read_labels

        read_labels(labels)
    assert main(["lait", "train-scorer", str(labels), "--out", str(out)]) == 2
