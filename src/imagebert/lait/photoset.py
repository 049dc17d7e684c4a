"""A labelled photo / non-photo image set the repository can regenerate: `imagebert lait make-photo-set OUT`.

Photographs are the real sample photos that install offline (scikit-image's `skimage.data`, scikit-learn's
sample images, matplotlib's Grace Hopper), each one a *source*: every augmented copy (crop, flip, grayscale,
down-and-up resize, blur, brightness/contrast, JPEG re-encode) carries its source name, so an evaluation can hold
out whole photographs, not just crops. Non-photos are rendered here: matplotlib charts, text screenshots,
diagrams, icons and clip-art (Pillow), plus the few real graphics those packages ship (logos, a colour wheel, a
checkerboard, a phantom). Each rendered seed is its own source. Everything is deterministic in `seed`.

scikit-image and scikit-learn are needed only to build this set (they are not runtime dependencies).
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

WORDS = [
    "data",
    "model",
    "report",
    "system",
    "user",
    "page",
    "result",
    "value",
    "table",
    "figure",
    "time",
    "level",
    "service",
    "update",
    "account",
    "total",
    "network",
    "version",
    "error",
    "price",
    "market",
    "sales",
    "growth",
    "index",
    "search",
    "file",
    "project",
    "team",
    "order",
    "customer",
    "method",
    "analysis",
    "sample",
    "image",
    "video",
    "share",
    "login",
    "settings",
    "profile",
    "download",
    "support",
    "contact",
    "news",
    "about",
    "privacy",
    "terms",
    "help",
    "home",
    "blog",
    "shop",
    "cart",
    "checkout",
    "quarter",
    "revenue",
    "cost",
    "margin",
    "forecast",
    "region",
    "chart",
    "summary",
]


def _matplotlib_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path())


def photo_sources() -> dict[str, Callable[[], list[np.ndarray]]]:
    """source name -> loader of the real photograph(s) of that source (a stereo pair is one source)."""
    import skimage.data as sk

    def one(fn):
        return lambda: [fn()]

    out: dict[str, Callable[[], list[np.ndarray]]] = {
        name: one(getattr(sk, name))
        for name in (
            "astronaut",
            "camera",  # grayscale
            "chelsea",  # a cat (the "skin share 0.99")
            "clock",  # grayscale
            "coffee",  # espresso on a wooden table
            "coins",  # grayscale
            "hubble_deep_field",
            "immunohistochemistry",  # stained tissue slide
            "moon",  # grayscale
            "retina",
            "rocket",
            "brick",  # grayscale texture
            "grass",  # grayscale texture
            "gravel",  # grayscale texture
            "cell",  # grayscale micrograph
        )
    }
    out["motorcycle"] = lambda: list(sk.stereo_motorcycle()[:2])

    def sklearn_image(name):
        def load():
            from sklearn.datasets import load_sample_image

            return [load_sample_image(name)]

        return load

    out["china"] = sklearn_image("china.jpg")
    out["flower"] = sklearn_image("flower.jpg")
    out["grace_hopper"] = lambda: [
        np.asarray(Image.open(_matplotlib_dir() / "sample_data" / "grace_hopper.jpg"))
    ]
    return out


def real_graphics() -> dict[str, Callable[[], Image.Image]]:
    """Real non-photographs shipped by the same packages."""
    import skimage.data as sk

    def arr(fn):
        def load():
            a = np.asarray(fn())
            if a.dtype == bool:
                a = a.astype(np.uint8) * 255
            elif a.dtype.kind == "f":
                a = (np.clip(a, 0, 1) * 255).astype(np.uint8)
            return _to_rgb(a)

        return load

    mpl = _matplotlib_dir() / "sample_data"
    return {
        "sk_logo": arr(sk.logo),
        "sk_colorwheel": arr(sk.colorwheel),
        "sk_checkerboard": arr(sk.checkerboard),
        "sk_phantom": arr(sk.shepp_logan_phantom),
        "sk_blobs": arr(sk.binary_blobs),
        "sk_horse": arr(sk.horse),
        "mpl_logo": lambda: _to_rgb(np.asarray(Image.open(mpl / "logo2.png"))),
        "mpl_present": lambda: _to_rgb(np.asarray(Image.open(mpl / "Minduka_Present_Blue_Pack.png"))),
    }


def _to_rgb(a: np.ndarray) -> Image.Image:
    im = Image.fromarray(a)
    if im.mode in ("RGBA", "LA", "P"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return im.convert("RGB")


# ----------------------------------------------------------------------------------------------------------
# Rendered non-photographs
# ----------------------------------------------------------------------------------------------------------


def _font(rng: random.Random, size: int, mono: bool = False) -> ImageFont.FreeTypeFont:
    ttf = _matplotlib_dir() / "fonts" / "ttf"
    names = (
        ["DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf"]
        if mono
        else [
            "DejaVuSans.ttf",
            "DejaVuSans-Bold.ttf",
            "DejaVuSerif.ttf",
            "DejaVuSans-Oblique.ttf",
            "STIXGeneral.ttf",
        ]
    )
    return ImageFont.truetype(str(ttf / rng.choice(names)), size)


def _palette(rng: random.Random) -> list[tuple[int, int, int]]:
    base = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (23, 190, 207),
        (250, 200, 30),
        (60, 60, 60),
    ]
    rng.shuffle(base)
    return base


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize()


def render_chart(seed: int) -> Image.Image:
    """A matplotlib chart of a random kind, style, size and resolution."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.pyplot import style

    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    styles = ["default", "ggplot", "dark_background", "bmh", "fivethirtyeight", "grayscale", "classic"]
    with style.context(rng.choice(styles)):
        fig = Figure(figsize=(rng.uniform(4, 9), rng.uniform(3, 7)), dpi=rng.choice([72, 90, 100, 120]))
        FigureCanvasAgg(fig)
        kind = rng.choice(
            ["line", "bar", "scatter", "pie", "hist", "area", "heatmap", "box", "step", "multi"]
        )
        axes = [fig.add_subplot(2, 2, i + 1) for i in range(4)] if kind == "multi" else [fig.add_subplot()]
        for ax in axes:
            k = rng.choice(["line", "bar", "scatter", "hist", "area"]) if kind == "multi" else kind
            n = rng.randint(5, 60)
            x = np.arange(n)
            if k == "line":
                for _ in range(rng.randint(1, 4)):
                    ax.plot(x, np.cumsum(nrng.normal(0, 1, n)), marker=rng.choice(["", "o", "s", "^"]))
            elif k == "bar":
                m = rng.randint(3, 15)
                ax.bar([_sentence(rng, 1) for _ in range(m)], nrng.uniform(1, 10, m))
                ax.tick_params(axis="x", rotation=rng.choice([0, 45, 90]))
            elif k == "scatter":
                ax.scatter(nrng.normal(0, 1, n * 4), nrng.normal(0, 1, n * 4), c=nrng.random(n * 4), s=20)
            elif k == "pie":
                m = rng.randint(3, 8)
                ax.pie(nrng.uniform(1, 5, m), labels=[_sentence(rng, 1) for _ in range(m)], autopct="%1.0f%%")
            elif k == "hist":
                ax.hist(nrng.normal(0, 1, 500), bins=rng.randint(10, 40))
            elif k == "area":
                ax.stackplot(x, *(nrng.uniform(0, 3, (3, n)).cumsum(axis=1)))
            elif k == "heatmap":
                im = ax.imshow(
                    nrng.random((rng.randint(5, 20), rng.randint(5, 20))),
                    cmap=rng.choice(["viridis", "magma", "coolwarm", "Blues"]),
                )
                fig.colorbar(im, ax=ax)
            elif k == "box":
                ax.boxplot([nrng.normal(0, rng.uniform(0.5, 2), 100) for _ in range(rng.randint(3, 8))])
            else:
                ax.step(x, nrng.integers(0, 10, n))
            if rng.random() < 0.7:
                ax.set_title(_sentence(rng, rng.randint(2, 5)))
            if rng.random() < 0.5:
                ax.grid(True)
            if rng.random() < 0.6:
                ax.set_xlabel(_sentence(rng, 2))
                ax.set_ylabel(_sentence(rng, 1))
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def render_screenshot(seed: int) -> Image.Image:
    """A text screenshot: a document, a web page with a header bar and buttons, a code editor or a terminal."""
    rng = random.Random(seed)
    w, h = rng.randint(480, 1100), rng.randint(360, 900)
    kind = rng.choice(["document", "web", "code", "terminal"])
    dark = kind in ("code", "terminal") and rng.random() < 0.8
    bg = (rng.randint(15, 45),) * 3 if dark else (rng.randint(235, 255),) * 3
    im = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(im)
    y = 10
    if kind == "web":
        bar = _palette(rng)[0]
        d.rectangle([0, 0, w, rng.randint(40, 70)], fill=bar)
        d.text((15, 12), _sentence(rng, 2), fill=(255, 255, 255), font=_font(rng, 22))
        y = 90
    size = rng.randint(11, 22)
    font = _font(rng, size, mono=kind in ("code", "terminal"))
    colours = _palette(rng)
    x0 = rng.randint(8, 40)
    while y < h - size:
        if kind == "web" and rng.random() < 0.08:
            c = colours[rng.randint(1, 5)]
            d.rounded_rectangle([x0, y, x0 + rng.randint(80, 200), y + size + 14], radius=6, fill=c)
            d.text((x0 + 10, y + 6), _sentence(rng, 1), fill=(255, 255, 255), font=font)
            y += size + 24
            continue
        indent = rng.choice([0, 0, 0, 1, 2]) * size * 2 if kind == "code" else 0
        text = _sentence(rng, rng.randint(2, max(3, (w - x0 - indent) // (size * 4))))
        if kind == "code":
            fill = rng.choice(colours[:6] + [(220, 220, 220) if dark else (30, 30, 30)] * 3)
        else:
            fill = (225, 225, 225) if dark else (rng.randint(0, 70),) * 3
        if kind == "document" and rng.random() < 0.1:
            d.text((x0, y), _sentence(rng, 3), fill=fill, font=_font(rng, size + 8))
            y += size + 18
            continue
        d.text((x0 + indent, y), text, fill=fill, font=font)
        y += int(size * rng.uniform(1.3, 1.8))
    return im


def render_diagram(seed: int) -> Image.Image:
    """Boxes, circles and arrows with labels: a flowchart or block diagram."""
    rng = random.Random(seed)
    w, h = rng.randint(500, 1000), rng.randint(400, 800)
    im = Image.new("RGB", (w, h), rng.choice([(255, 255, 255), (248, 248, 240), (240, 244, 250)]))
    d = ImageDraw.Draw(im)
    colours = _palette(rng)
    font = _font(rng, rng.randint(12, 20))
    nodes = []
    for _ in range(rng.randint(3, 9)):
        cx, cy = rng.randint(60, w - 60), rng.randint(40, h - 40)
        bw, bh = rng.randint(70, 160), rng.randint(30, 70)
        nodes.append((cx, cy))
        fill = rng.choice(colours[:6] + [(255, 255, 255)])
        box = [cx - bw // 2, cy - bh // 2, cx + bw // 2, cy + bh // 2]
        if rng.random() < 0.3:
            d.ellipse(box, fill=fill, outline=(0, 0, 0), width=2)
        else:
            d.rounded_rectangle(box, radius=rng.choice([0, 8]), fill=fill, outline=(0, 0, 0), width=2)
        d.text((box[0] + 6, cy - 8), _sentence(rng, 1), fill=(0, 0, 0), font=font)
    for a, b in zip(nodes, nodes[1:]):
        d.line([a, b], fill=(40, 40, 40), width=rng.choice([1, 2, 3]))
        d.ellipse([b[0] - 4, b[1] - 4, b[0] + 4, b[1] + 4], fill=(40, 40, 40))
    return im


def render_icon(seed: int) -> Image.Image:
    """One large glyph (circle, rounded square, star, arrow, letter) on a flat or gradient background."""
    rng = random.Random(seed)
    s = rng.randint(320, 640)
    c1, c2 = _palette(rng)[:2]
    if rng.random() < 0.5:
        im = Image.new("RGB", (s, s), c1)
    else:
        t = np.linspace(0, 1, s)[:, None, None]
        im = Image.fromarray((np.array(c1) * (1 - t) + np.array(c2) * t).repeat(s, axis=1).astype(np.uint8))
    d = ImageDraw.Draw(im)
    fg = rng.choice([(255, 255, 255), (20, 20, 20), _palette(rng)[3]])
    m = s // rng.randint(4, 6)
    shape = rng.choice(["circle", "square", "star", "arrow", "letter"])
    if shape == "circle":
        d.ellipse([m, m, s - m, s - m], fill=fg)
    elif shape == "square":
        d.rounded_rectangle([m, m, s - m, s - m], radius=s // 8, fill=fg)
    elif shape == "star":
        pts = []
        for i in range(10):
            r = (s / 2 - m) * (1.0 if i % 2 == 0 else 0.45)
            a = np.pi / 2 + i * np.pi / 5
            pts.append((s / 2 + r * np.cos(a), s / 2 - r * np.sin(a)))
        d.polygon(pts, fill=fg)
    elif shape == "arrow":
        d.polygon(
            [
                (m, s / 2 - m / 2),
                (s / 2, s / 2 - m / 2),
                (s / 2, m),
                (s - m, s / 2),
                (s / 2, s - m),
                (s / 2, s / 2 + m / 2),
                (m, s / 2 + m / 2),
            ],
            fill=fg,
        )
    else:
        d.text((s / 2, s / 2), rng.choice("ABCDEFGHKMNPRSTXZ"), fill=fg, font=_font(rng, s // 2), anchor="mm")
    return im


def render_clipart(seed: int) -> Image.Image:
    """A cartoon scene: sky (flat or gradient), sun, hills, a house and trees, with thick outlines."""
    rng = random.Random(seed)
    w, h = rng.randint(400, 900), rng.randint(320, 700)
    top = (rng.randint(80, 140), rng.randint(160, 210), rng.randint(220, 255))
    bottom = (rng.randint(180, 230), rng.randint(220, 245), 255)
    t = np.linspace(0, 1, h)[:, None, None]
    sky = (
        (np.array(top) * (1 - t) + np.array(bottom) * t)
        if rng.random() < 0.6
        else np.array(top)[None, None] + 0 * t
    )
    im = Image.fromarray(np.broadcast_to(sky, (h, w, 3)).astype(np.uint8).copy())
    d = ImageDraw.Draw(im)
    ow = rng.choice([0, 2, 3, 4])
    outline = (30, 30, 30) if ow else None
    r = rng.randint(30, 70)
    sx, sy = rng.randint(r, w - r), rng.randint(r, h // 3)
    d.ellipse(
        [sx - r, sy - r, sx + r, sy + r], fill=(255, rng.randint(190, 230), 40), outline=outline, width=ow
    )
    for _ in range(rng.randint(1, 3)):
        cx = rng.randint(0, w)
        d.ellipse(
            [cx - w // 2, h // 2 + rng.randint(0, h // 4), cx + w // 2, h * 2],
            fill=(rng.randint(40, 110), rng.randint(150, 200), rng.randint(40, 90)),
            outline=outline,
            width=ow,
        )
    hx, hy, hs = rng.randint(40, w - 200), rng.randint(h // 2, h - 160), rng.randint(90, 150)
    d.rectangle([hx, hy, hx + hs, hy + hs], fill=rng.choice(_palette(rng)), outline=outline, width=ow)
    d.polygon(
        [(hx - 10, hy), (hx + hs / 2, hy - hs * 0.6), (hx + hs + 10, hy)], fill=(170, 40, 40), outline=outline
    )
    d.rectangle(
        [hx + hs * 0.4, hy + hs * 0.5, hx + hs * 0.6, hy + hs], fill=(100, 60, 30), outline=outline, width=ow
    )
    for _ in range(rng.randint(1, 4)):
        tx, ty = rng.randint(0, w), rng.randint(h // 2, h - 40)
        d.rectangle([tx - 6, ty, tx + 6, ty + 50], fill=(110, 70, 30), outline=outline, width=min(ow, 2))
        d.ellipse(
            [tx - 35, ty - 60, tx + 35, ty + 10],
            fill=(30, rng.randint(120, 170), 50),
            outline=outline,
            width=ow,
        )
    return im


RENDERERS: dict[str, Callable[[int], Image.Image]] = {
    "chart": render_chart,
    "screenshot": render_screenshot,
    "diagram": render_diagram,
    "icon": render_icon,
    "clipart": render_clipart,
}


# ----------------------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------------------


def jpeg_reencode(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def augment(im: Image.Image, rng: random.Random, photo: bool) -> tuple[Image.Image, bool]:
    """What a crawl does to an image: crops, flips, grayscale, resizes, blur, tone changes, JPEG re-encodes.
    Returns the image and whether it went through JPEG (so a writer can keep it as JPEG)."""
    im = im.convert("RGB")
    w, h = im.size
    if rng.random() < (0.85 if photo else 0.35):
        frac = rng.uniform(0.45, 1.0) if photo else rng.uniform(0.6, 1.0)
        cw, ch = (
            max(32, int(w * frac * rng.uniform(0.8, 1.2))),
            max(32, int(h * frac * rng.uniform(0.8, 1.2))),
        )
        cw, ch = min(cw, w), min(ch, h)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        im = im.crop((x, y, x + cw, y + ch))
    if photo and rng.random() < 0.5:  # mirrored text is not what a crawl serves
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.25:
        im = im.convert("L").convert("RGB")
    if photo and rng.random() < 0.4:
        arr = np.asarray(im, dtype=np.float32)
        arr = (arr - 128) * rng.uniform(0.7, 1.3) + 128 + rng.uniform(-30, 30)
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        f = rng.uniform(0.35, 0.8)
        small = im.resize(
            (max(16, int(im.width * f)), max(16, int(im.height * f))), Image.Resampling.BILINEAR
        )
        im = small.resize(im.size, Image.Resampling.BICUBIC)
    if rng.random() < 0.12:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    # final size: what a page would serve (the pipeline keeps only images over 300 px)
    target = rng.randint(320, 720)
    scale = target / max(im.size)
    im = im.resize(
        (max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BICUBIC
    )
    if rng.random() < (0.8 if photo else 0.5):
        return jpeg_reencode(im, rng.randint(25, 95)), True
    return im, False


def iter_photo_set(
    seed: int = 0, per_photo: int = 24, per_graphic: int = 12, rendered_per_kind: int = 60, variants: int = 2
) -> Iterator[tuple[tuple[Image.Image, bool], dict]]:
    """((image, was_jpeg), row) pairs; row = {"label", "source", "kind"}. Deterministic in `seed`."""
    rng = random.Random(seed)
    for source, load in photo_sources().items():
        bases = [_to_rgb(np.asarray(a)) for a in load()]
        for i in range(per_photo):
            yield (
                augment(bases[i % len(bases)], rng, photo=True),
                {"label": "photo", "source": source, "kind": "photo"},
            )
    for source, load in real_graphics().items():
        base = load()
        for _ in range(per_graphic):
            yield augment(base, rng, photo=False), {"label": "non_photo", "source": source, "kind": "graphic"}
    for kind, render in RENDERERS.items():
        for s in range(rendered_per_kind):
            base = render(seed * 100_003 + s)
            for _ in range(variants):
                row = {"label": "non_photo", "source": f"{kind}-{s}", "kind": kind}
                yield augment(base, rng, photo=False), row


def write_photo_set(folder: str | Path, seed: int = 0, **kw) -> Path:
    """Write the set as images plus labels.jsonl ({"image", "label", "source", "kind"}); returns labels path."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, ((im, was_jpeg), row) in enumerate(iter_photo_set(seed, **kw)):
        if was_jpeg:  # keep the JPEG artefacts, add almost none
            name = f"images/{i:05d}-{row['source']}.jpg"
            im.save(folder / name, format="JPEG", quality=97)
        else:
            name = f"images/{i:05d}-{row['source']}.png"
            im.save(folder / name, format="PNG", optimize=False, compress_level=6)
        lines.append(json.dumps({"image": name, **row}))
    labels = folder / "labels.jsonl"
    labels.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return labels
