"""The one safe image decoder: bytes or a file -> a fully decoded, EXIF-oriented 8-bit RGB image, or a typed error.

Guards, in order: empty input; the decompression-bomb check on the header size (before any pixel is decoded,
against the caller's explicit `max_pixels`), with Pillow's own `DecompressionBombWarning` turned into an error
as a second line of defence; a header hook for caller-specific refusals (animation, minimum side) that also runs
before decoding; then a full decode inside the guard, so truncated data fails here and not later.

The alpha rule (one, for every caller): transparent and semi-transparent pixels are composited onto WHITE, what a
browser or viewer shows on a page, and what the LAIT photo set renders its graphics onto. Palette images with a
transparency entry follow the same rule. 16-bit and 32-bit grey images are scaled to 8 bits (not clipped), every
other mode (CMYK, YCbCr, LAB, 1-bit, grey) goes through Pillow's RGB conversion.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import struct
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageDecodeError",
    "decode_rgb",
    "pillow_limits",
    "pixel_limit",
    "to_rgb",
]

# 89.5 MP is Pillow's own warning threshold; a real photo above it is rare, a bomb is far above it.
DEFAULT_MAX_PIXELS = 89_478_485


class ImageDecodeError(Exception):
    """Why an image cannot be used. `kind` is one of: not_found, not_a_file, empty, invalid_size,
    decompression_bomb, unrecognised, truncated, corrupt, out_of_memory. `pixels` is the pixel count when known
    (bombs). `message` is a short human-readable cause."""

    def __init__(self, kind: str, message: str, pixels: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.pixels = pixels


@contextlib.contextmanager
def pixel_limit(max_pixels: int) -> Iterator[None]:
    """Let Pillow open images up to `max_pixels` for the duration (its own guard would refuse sizes above
    `Image.MAX_IMAGE_PIXELS` even when the caller allows them). Only ever raises the limit. Process-global: use it
    once around a whole run, not per image in threads."""
    old = Image.MAX_IMAGE_PIXELS
    if old is not None and max_pixels > old:
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


@contextlib.contextmanager
def pillow_limits(max_pixels: int) -> Iterator[None]:
    """Set Pillow's pixel limit to exactly `max_pixels` and refuse truncated data, restoring both afterwards.

    For worker processes that own their Pillow settings (LAIT): Pillow then raises its own bomb error at twice
    the limit while reading the header, before our header check even sees the size. Process-global."""
    saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = max_pixels, False
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB under the module's alpha rule (composite onto white)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or (arr.size and arr.max() > 255) else 255.0
        arr = np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _bomb_pixels(exc: BaseException) -> int | None:
    m = re.search(r"\((\d+) pixels\)", str(exc))
    return int(m.group(1)) if m else None


def decode_rgb(
    source: bytes | str | os.PathLike,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    check_header: Callable[[Image.Image], None] | None = None,
    exif_transpose: bool = True,
) -> Image.Image:
    """Decode `source` (raw bytes or a path) to RGB; raise `ImageDecodeError` (or whatever `check_header` raises)
    on any problem. `check_header(img)` sees the opened, not yet decoded image (size, format, frame count)."""
    if max_pixels <= 0:
        raise ValueError("max_pixels must be positive")
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise ImageDecodeError("empty", "empty file")
        stream: io.BytesIO | Path = io.BytesIO(bytes(source))
    else:
        path = Path(source)
        if not path.is_file():
            if path.exists():
                raise ImageDecodeError("not_a_file", "not a regular file")
            raise ImageDecodeError("not_found", "file not found")
        if path.stat().st_size == 0:
            raise ImageDecodeError("empty", "empty file")
        stream = path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as img:
                width, height = img.size
                if width <= 0 or height <= 0:
                    raise ImageDecodeError("invalid_size", f"invalid image size {width}x{height}")
                if width * height > max_pixels:
                    raise ImageDecodeError(
                        "decompression_bomb",
                        f"decompression bomb: {width}x{height} = {width * height} pixels > limit {max_pixels}",
                        width * height,
                    )
                if check_header is not None:
                    check_header(img)
                img.load()  # decode now, inside the guard: truncated data fails here
                if exif_transpose:
                    img = ImageOps.exif_transpose(img)
                rgb = to_rgb(img)
                rgb.load()
                return rgb
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError("decompression_bomb", f"decompression bomb: {exc}", _bomb_pixels(exc)) from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageDecodeError("unrecognised", "not a recognised image format") from exc
    except MemoryError as exc:
        raise ImageDecodeError("out_of_memory", "out of memory while decoding") from exc
    except (OSError, SyntaxError, ValueError, TypeError, IndexError, EOFError, struct.error) as exc:
        msg = str(exc) or type(exc).__name__
        if "truncated" in msg.lower():
            raise ImageDecodeError("truncated", f"truncated image: {msg}") from exc
        raise ImageDecodeError("corrupt", f"corrupt image ({type(exc).__name__}): {msg}") from exc
