"""Step 2: image bytes -> a checked RGB image, or a named reject.

Two pluggable classifiers follow the paper: "pornographic/racy" and "non-realistic/non-learnable". The defaults
are colour/edge heuristics that run anywhere with no weights. They are weak (see docs/lait.md): a skin-tone ratio
cannot tell a portrait from nudity and a palette count cannot tell a flat-lit photo from clip art. Plug a real
model in with `images.racy_classifier: "my_pkg.module:factory"`: the factory returns a callable
`(PIL.Image.Image) -> (label, confidence)`, label "normal" to keep.
"""

from __future__ import annotations

import hashlib
import importlib
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from imagebert.lait.config import ImageConfig
from imagebert.runtime.images import ImageDecodeError, decode_rgb, pillow_limits

Classifier = Callable[[Image.Image], tuple[str, float]]


class ImageReject(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass
class CheckedImage:
    image_id: str  # content hash of the original bytes
    dhash: int
    width: int
    height: int
    jpeg: bytes
    thumb: Image.Image  # small RGB copy for classifiers and neural features


def content_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def dhash(image: Image.Image, size: int = 8) -> int:
    """Difference hash: 64 bits, one per horizontally adjacent grey-pixel pair of a 9x8 thumbnail."""
    g = np.asarray(image.convert("L").resize((size + 1, size), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (g[:, 1:] > g[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def decode_image(data: bytes, cfg: ImageConfig) -> CheckedImage:
    """Size, decodability, animation, aspect and bomb checks; returns the image re-encoded as JPEG.

    Decoding is the shared `imagebert.runtime.images.decode_rgb` (EXIF orientation applied, alpha composited onto
    white, 16-bit grey scaled); the LAIT refusals (animation, small side, aspect) run on the header, before any
    pixel is decoded. Pillow's limit is set to `images.max_pixels` for the call (and restored after): other code
    in the same process keeps its own settings.
    """
    if len(data) > cfg.max_bytes:
        raise ImageReject("too_many_bytes", f"{len(data)} bytes")

    def check_header(im: Image.Image) -> None:
        w, h = im.size
        if getattr(im, "is_animated", False) or getattr(im, "n_frames", 1) > 1:
            raise ImageReject("animated", f"{im.format} {getattr(im, 'n_frames', '?')} frames")
        if w <= cfg.min_side or h <= cfg.min_side:  # from the header: no pixels decoded yet
            raise ImageReject("too_small", f"{w}x{h}")
        if max(w, h) / min(w, h) > cfg.max_aspect:
            raise ImageReject("extreme_aspect", f"{w}x{h}")

    try:
        with pillow_limits(cfg.max_pixels):
            rgb = decode_rgb(data, cfg.max_pixels, check_header=check_header)
    except ImageReject:
        raise
    except ImageDecodeError as exc:
        if exc.kind == "decompression_bomb":
            # Pillow's own message quotes its error limit (twice MAX_IMAGE_PIXELS); state ours.
            got = f"{exc.pixels:,} pixels" if exc.pixels is not None else "size unknown"
            raise ImageReject(
                "decompression_bomb", f"{got} > images.max_pixels = {cfg.max_pixels:,} (from the header)"
            ) from None
        raise ImageReject("undecodable", f"{exc.kind}: {exc.message}"[:160]) from None
    except Exception as exc:  # noqa: BLE001 - every decoder failure is one reject reason
        raise ImageReject("undecodable", f"{type(exc).__name__}: {exc}"[:160]) from None
    w, h = rgb.size
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=cfg.jpeg_quality)
    thumb = rgb.copy()
    thumb.thumbnail((256, 256), Image.Resampling.BILINEAR)
    return CheckedImage(content_id(data), dhash(rgb), w, h, buf.getvalue(), thumb)


def skin_ratio(image: Image.Image) -> float:
    """Fraction of pixels in a common YCbCr skin-tone box (Cb 77-127, Cr 133-173)."""
    ycc = np.asarray(image.convert("YCbCr"), dtype=np.int16)
    cb, cr = ycc[..., 1], ycc[..., 2]
    mask = (cb >= 77) & (cb <= 127) & (cr >= 133) & (cr <= 173)
    return float(mask.mean())


def type_statistics(image: Image.Image) -> dict[str, float]:
    """Palette size (5 bits per channel) and flat-pixel fraction of a 128 px copy; edge density (share of pixels
    whose grey level jumps by more than 20 to a neighbour) of the image as given (the 256 px classifier copy)."""
    small = image.copy()
    small.thumbnail((128, 128), Image.Resampling.NEAREST)
    a = np.asarray(small, dtype=np.int16)
    q = (a >> 3).reshape(-1, 3)
    colors = len(np.unique(q[:, 0] * 1024 + q[:, 1] * 32 + q[:, 2]))
    g = a.mean(axis=2)
    dx = np.abs(np.diff(g, axis=1))
    dy = np.abs(np.diff(g, axis=0))
    flat = float(((dx[:-1, :] == 0) & (dy[:, :-1] == 0)).mean())
    g = np.asarray(image.convert("RGB"), dtype=np.int16).mean(axis=2)
    dx = np.abs(np.diff(g, axis=1))
    dy = np.abs(np.diff(g, axis=0))
    edges = float(((dx[:-1, :] > 20) | (dy[:, :-1] > 20)).mean())
    return {"colors": float(colors), "flat_fraction": flat, "edge_density": edges}


def heuristic_racy(cfg: ImageConfig) -> Classifier:
    def classify(image: Image.Image) -> tuple[str, float]:
        r = skin_ratio(image)
        return ("racy", r) if r >= cfg.skin_ratio_threshold else ("normal", 1.0 - r)

    return classify


def heuristic_type(cfg: ImageConfig) -> Classifier:
    def classify(image: Image.Image) -> tuple[str, float]:
        s = type_statistics(image)
        if s["colors"] < cfg.min_palette_colors or s["flat_fraction"] > cfg.max_flat_fraction:
            return "non_realistic", s["flat_fraction"]
        if s["edge_density"] > cfg.max_edge_density:
            return "non_learnable", s["edge_density"]
        return "normal", 1.0

    return classify


def _always_normal(image: Image.Image) -> tuple[str, float]:
    return "normal", 1.0


def load_classifier(spec: str, cfg: ImageConfig, default: Callable[[ImageConfig], Classifier]) -> Classifier:
    """ "heuristic" -> the built-in rule; "learned" -> the shipped photo model; "none" -> keep everything;
    "pkg.mod:factory" -> factory(cfg)."""
    if spec == "heuristic":
        return default(cfg)
    if spec == "none":
        return _always_normal
    if spec == "learned":
        from imagebert.lait.photoclf import learned_type

        return learned_type(cfg)
    if ":" not in spec:
        raise ValueError(
            f"classifier '{spec}' must be 'learned', 'heuristic', 'none' or 'package.module:factory'"
        )
    mod, attr = spec.split(":", 1)
    return getattr(importlib.import_module(mod), attr)(cfg)
