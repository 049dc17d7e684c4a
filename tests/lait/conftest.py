"""A crawl built to hit every filter and reject reason of the LAIT pipeline, written with warcio."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from imagebert.lait import load_lait_config, run_lait
from imagebert.lait.images import content_id
from imagebert.lait.synthetic import (
    ENGLISH,
    WarcBuilder,
    animated_gif,
    article,
    bomb_png,
    clipart,
    encode,
    noise_image,
    photo,
    skin_image,
)

SITE = "http://news.example.com"
SHARED = "A beautiful view of the city at night"


def fig(
    src: str, alt: str | None = None, title: str | None = None, caption: str | None = None, size=400
) -> str:
    attrs = f"src='{src}' width='{size}' height='{size}'"
    if alt is not None:
        attrs += f" alt='{alt}'"
    if title is not None:
        attrs += f" title='{title}'"
    cap = f"<figcaption>{caption}</figcaption>" if caption is not None else ""
    return f"<figure><img {attrs}>{cap}</figure>"


def build_corpus(root: Path) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    crawl = root / "crawl"
    crawl.mkdir()
    p = {i: encode(photo(i)) for i in range(1, 16)}
    near_dup_of_5 = encode(photo(5), quality=60)  # other bytes, same picture

    with WarcBuilder(crawl / "a.warc.gz") as w:
        w.page(
            f"{SITE}/boat",
            article(
                "Boats",
                ENGLISH,
                fig("/img/p1.jpg", alt="A small sailing boat on a calm blue lake at sunrise", title="Boat"),
            ),
        )
        w.image(f"{SITE}/img/p1.jpg", p[1])
        w.page(
            f"{SITE}/fr",
            article(
                "Bateaux",
                "Nous avons passé tout le week-end à marcher le long de la rivière et à parler avec les "
                "habitants de la vieille ville. Le temps était doux et les rues étaient calmes.",
                fig("/img/p2.jpg", alt="Un petit bateau"),
            ),
        )
        w.page(f"{SITE}/short", "<html><body><p>Hi there.</p><img src='/img/p2.jpg'></body></html>")
        w.page(f"{SITE}/noimg", f"<html><body><h1>No pictures</h1><p>{ENGLISH}</p></body></html>")
        w.page(
            f"{SITE}/icons",
            "<html><body><p>" + ENGLISH + "</p><img src='/icons/share.png' width='24' height='24'>"
            "<img src='/img/ads/banner.gif' width='728' height='90'></body></html>",
        )
        w.page(
            f"{SITE}/gallery",
            "<html><body><p>"
            + ENGLISH
            + "</p>"
            + "".join(f"<img src='/t/{i}.jpg'>" for i in range(600))
            + "</body></html>",
        )
        cafe = article(
            "Coffee",
            ENGLISH,
            fig("/img/p2.jpg", alt="A cup of coffee on a wooden table in a small café"),
        )
        w.page(f"{SITE}/cafe", cafe.encode("cp1252"), charset="utf-8")  # declared charset is wrong
        w.image(f"{SITE}/img/p2.jpg", p[2])
        for name, url, data, ctype in [
            ("small", "/img/small.jpg", encode(photo(20, 200, 200)), "image/jpeg"),
            ("wide", "/img/wide.jpg", encode(photo(21, 1200, 320)), "image/jpeg"),
            ("anim", "/img/anim.gif", animated_gif(), "image/gif"),
            ("broken", "/img/broken.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x13" * 500, "image/jpeg"),
            ("bomb", "/img/bomb.png", bomb_png(), "image/png"),
            ("racy", "/img/racy.jpg", encode(skin_image(3)), "image/jpeg"),
            ("clipart", "/img/clipart.png", encode(clipart(), "PNG"), "image/png"),
            ("noise", "/img/noise.png", encode(noise_image(4), "PNG"), "image/png"),
        ]:
            w.page(
                f"{SITE}/{name}",
                article(name.title(), ENGLISH, fig(url, alt="A quiet street in the old part of the town")),
            )
            w.image(f"{SITE}{url}", data, ctype)
        w.page(
            f"{SITE}/missing",
            article("Missing", ENGLISH, fig("/img/missing.jpg", alt="A red bicycle by a wall")),
        )
        w.page(
            f"{SITE}/badtext",
            article(
                "Deals",
                ENGLISH,
                fig(
                    "/img/p3.jpg",
                    alt="IMG_2034.jpg",
                    title="Buy now and get free shipping",
                    caption="Hot xxx deals",
                ),
                head="<meta property='og:description' content='All rights reserved'>",
            ),
        )
        w.image(f"{SITE}/img/p3.jpg", p[3])
        w.page(
            f"{SITE}/lowscore",
            article("Low", ENGLISH, fig("/img/p4.jpg", caption="Zorblaxian view from here")),
        )
        w.image(f"{SITE}/img/p4.jpg", p[4])
        w.page(
            f"{SITE}/dup1",
            article(
                "Dog",
                ENGLISH,
                fig("/img/p5.jpg", alt="Our dog resting on the grass"),
            ),
        )
        w.image(f"{SITE}/img/p5.jpg", p[5])
        for i in range(6, 9):
            w.page(f"{SITE}/generic{i}", article("City", ENGLISH, fig(f"/img/p{i}.jpg", alt=SHARED)))
            w.image(f"{SITE}/img/p{i}.jpg", p[i])

    with WarcBuilder(crawl / "b.warc.gz") as w:
        w.page(
            "http://blog.example.org/dog",
            article(
                "Dog",
                ENGLISH,
                fig("http://cdn.example.org/dog.jpg", alt="A brown dog lying on green grass in the garden"),
                head="<meta property='og:description' content='Qwxz blorf snarfle plinth gorp'>",
            ),
        )
        w.image("http://cdn.example.org/dog.jpg", p[5])  # same bytes as p5 in a.warc.gz
        w.page(
            "http://blog.example.org/dog-small",
            article(
                "Dog",
                ENGLISH,
                fig(
                    "/dog-q60.jpg",
                    alt="A dog on the lawn",
                    title="Dog picture with a long title " + "and more " * 20,
                ),
            ),
        )
        w.image("http://blog.example.org/dog-q60.jpg", near_dup_of_5)
        for i in range(9, 11):
            w.page(
                f"http://blog.example.org/generic{i}",
                article("City", ENGLISH, fig(f"/img/p{i}.jpg", alt=SHARED)),
            )
            w.image(f"http://blog.example.org/img/p{i}.jpg", p[i])
        w.page(
            "http://blog.example.org/og",
            "<html><head><meta property='og:image' content='http://blog.example.org/img/p12.jpg'>"
            "<meta property='og:description' content='A red vintage car parked beside an old stone wall'></head>"
            "<body><p>" + ENGLISH + "</p></body></html>",
        )
        w.image("http://blog.example.org/img/p12.jpg", p[12])
        w.response(
            "http://blog.example.org/gone",
            b"<html><body>Not found</body></html>",
            "text/html",
            "404 Not Found",
        )
        w.page(
            "http://blog.example.org/mirror",
            article(
                "Mirror",
                ENGLISH,
                fig("http://static.example.net/m/p13.jpg", alt="Two horses in a snowy field"),
            ),
        )
    # A WARC whose last member is cut in the middle of a page record.
    truncated = WarcBuilder(crawl / "c.warc.gz")
    truncated.page(
        "http://shop.example.com/tea",
        article("Tea", ENGLISH, fig("/tea.jpg", alt="A glass teapot with green tea leaves on a tray")),
    )
    truncated.image("http://shop.example.com/tea.jpg", p[14])
    truncated.close()
    whole = (crawl / "c.warc.gz").read_bytes()
    last = WarcBuilder(root / "tmp-last.warc.gz")
    last.page(
        "http://shop.example.com/cut",
        article("Cut", ENGLISH + " " + ENGLISH * 20, fig("/tea.jpg", alt="Tea")),
    )
    last.close()
    tail = (root / "tmp-last.warc.gz").read_bytes()
    (root / "tmp-last.warc.gz").unlink()
    (crawl / "c.warc.gz").write_bytes(whole + tail[: len(tail) // 2])
    # A WARC with garbage after its first record.
    with WarcBuilder(crawl / "d.warc.gz") as w:
        w.page(
            "http://garden.example.com/rose",
            article("Rose", ENGLISH, fig("/rose.jpg", alt="A white rose in a garden after the rain")),
        )
        w.image("http://garden.example.com/rose.jpg", p[15])
        w.raw(gzip.compress(b"not a warc record at all\r\n\r\n") + b"\x00garbage" * 10)
    # A folder of saved HTML pages with images beside them.
    html = crawl / "saved"
    (html / "pics").mkdir(parents=True)
    (html / "pics" / "p11.jpg").write_bytes(p[11])
    (html / "lighthouse.html").write_text(
        article(
            "Coast", ENGLISH, fig("pics/p11.jpg", alt="An old lighthouse on a rocky coast under grey clouds")
        ),
        encoding="utf-8",
    )
    (html / "junk.html").write_bytes(bytes(range(256)) * 8)
    mirror = root / "mirror"
    (mirror / "static.example.net" / "m").mkdir(parents=True)
    (mirror / "static.example.net" / "m" / "p13.jpg").write_bytes(p[13])
    return {"crawl": crawl, "mirror": mirror, "p5": content_id(p[5]), "p5_q60": content_id(near_dup_of_5)}


# The exact-count tests below pin the rule-based filters and the hand-set scorer: the fixture's images are
# generated (colour fields, skin-tone noise, per-pixel noise), which is what those rules are about. The learned
# defaults are tested on real photographs and rendered charts in test_filters_learned.py.
RULES = [
    "images.type_classifier=heuristic",
    "images.racy_classifier=heuristic",
    "scoring.model=hand",
    "scoring.min_score=0.5",
]


def lait_config(mirror: Path, *extra: str):
    return load_lait_config(
        None, [f"images.mirror_dir={mirror}", "aggregation.max_images_per_description=3", *RULES, *extra]
    )


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict:
    return build_corpus(tmp_path_factory.mktemp("lait-corpus"))


@pytest.fixture(scope="session")
def local_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("lait-out")
    summary = run_lait([corpus["crawl"]], out, lait_config(corpus["mirror"]), workers=1)
    return out, summary
