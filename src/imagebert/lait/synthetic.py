"""Synthetic crawl material for tests and benchmarks: photo-like images, WARC writing helpers.

The images are generated, not real photographs: smooth random colour fields with sensor-like noise, which is
enough for the pipeline's size, hash and heuristic-classifier checks.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter


def photo(seed: int, width: int = 400, height: int = 400) -> Image.Image:
    """A photo-like image: a low-frequency random field in cool colours plus fine noise (no skin tones)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((6, 6, 3))
    field = np.asarray(
        Image.fromarray((coarse * 255).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC),
        dtype=np.float32,
    )
    field[..., 0] *= 0.45  # keep red low: stays out of the skin-tone box
    field[..., 2] = 80 + 0.65 * field[..., 2]
    field += rng.normal(0, 6, field.shape)
    return Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))


def skin_image(seed: int, size: int = 400) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.array([224, 172, 140], dtype=np.float32)
    arr = base + rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def clipart(size: int = 400) -> Image.Image:
    arr = np.full((size, size, 3), 255, np.uint8)
    arr[size // 4 : size // 2, size // 4 : 3 * size // 4] = (220, 30, 30)
    arr[size // 2 : 3 * size // 4, size // 3 : 2 * size // 3] = (20, 60, 200)
    return Image.fromarray(arr)


def noise_image(seed: int, size: int = 400) -> Image.Image:
    """Per-pixel noise: high edge density, like dense text or a screenshot of small print."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def encode(image: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def animated_gif(size: int = 400) -> bytes:
    frames = [photo(1, size, size).convert("P"), photo(2, size, size).convert("P")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def bomb_png(side: int = 8000) -> bytes:
    """A tiny file that decodes to side x side pixels."""
    return encode(Image.new("1", (side, side)), "PNG", optimize=True)


class WarcBuilder:
    """Write Common-Crawl-style WARC files: one gzip member per record, HTTP response records."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fh = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._w = WARCWriter(self._fh, gzip=True)

    def response(self, url: str, body: bytes, content_type: str, status: str = "200 OK") -> None:
        headers = StatusAndHeaders(
            status,
            [("Content-Type", content_type), ("Content-Length", str(len(body)))],
            protocol="HTTP/1.1",
        )
        rec = self._w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers)
        self._w.write_record(rec)

    def page(self, url: str, html: str | bytes, charset: str | None = "utf-8") -> None:
        body = html.encode(charset or "utf-8") if isinstance(html, str) else html
        self.response(url, body, "text/html" + (f"; charset={charset}" if charset else ""))

    def image(self, url: str, data: bytes, content_type: str = "image/jpeg") -> None:
        self.response(url, data, content_type)

    def raw(self, data: bytes) -> None:
        self._fh.write(data)

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> WarcBuilder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def article(title: str, body_text: str, figure: str = "", head: str = "") -> str:
    return (
        f"<!doctype html><html><head><title>{title}</title>{head}</head><body>"
        f"<nav><a href='/'>Home</a> <img src='/static/logo.png' width='120' height='40'></nav>"
        f"<article><h1>{title}</h1><p>{body_text}</p>{figure}<p>{body_text}</p></article>"
        f"<footer>Contact us</footer></body></html>"
    )


ENGLISH = (
    "We spent the whole weekend walking along the river and talking with people who live in the old town. "
    "The weather was mild, the streets were quiet, and every corner seemed to have a story worth telling."
)


SAMPLE_CAPTIONS = (
    "A small sailing boat on a calm lake at sunrise",
    "An old stone bridge over a quiet river",
    "A red vintage car parked beside a brick wall",
    "Two horses grazing in a green field",
    "A lighthouse on a rocky coast under grey clouds",
    "A wooden cabin in a snowy forest",
)


def write_sample_crawl(folder: str | Path, pages: int = 12) -> Path:
    """A small demo crawl (one WARC) for trying the pipeline: photo pages, a French page, a logo, a generic caption."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sample.warc.gz"
    with WarcBuilder(path) as w:
        for i in range(pages):
            site = f"http://site{i % 3}.example.com"
            alt = SAMPLE_CAPTIONS[i % len(SAMPLE_CAPTIONS)] if i < len(SAMPLE_CAPTIONS) else "Photo gallery"
            fig = f"<figure><img src='/img/{i}.jpg' alt='{alt}' width='640' height='480'></figure>"
            w.page(f"{site}/post/{i}", article(f"Post {i}", ENGLISH, fig))
            w.image(f"{site}/img/{i}.jpg", encode(photo(100 + i, 640, 480)))
        w.page(
            "http://site0.example.com/fr",
            article("Bateau", "Nous avons passé tout le week-end au bord de la rivière avec des amis.", ""),
        )
        w.page(
            "http://site0.example.com/logo", article("Logo", ENGLISH, "<img src='/logo.png' alt='Our logo'>")
        )
        w.image("http://site0.example.com/logo.png", encode(clipart(), "PNG"), "image/png")
    return path
