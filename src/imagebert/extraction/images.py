"""Robust image loading: every bad file becomes an `ImageRejected` with a reason, never a crashed run.

Handled: unreadable / non-image / truncated files (rejected), decompression bombs (rejected from the header,
before any pixel is decoded, against an explicit pixel limit), EXIF orientation (applied, so boxes refer to the
image as displayed), and every colour mode (CMYK, grayscale, 16-bit, palette, alpha) converted to RGB, with
transparent pixels composited onto white.
"""

from __future__ import annotations

import contextlib
import os
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = ["DEFAULT_MAX_PIXELS", "ImageRejected", "load_rgb_image", "pixel_limit", "safe_join"]

# 89.5 MP is Pillow's own warning threshold; a real photo above it is rare, a bomb is far above it.
DEFAULT_MAX_PIXELS = 89_478_485


class ImageRejected(Exception):
    """An image that cannot be used; `reason` is a short human-readable cause for the rejects file."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def safe_join(root: str | os.PathLike, relative: str) -> Path:
    """Join `relative` under `root`, refusing absolute paths and anything that resolves outside `root`.

    List files and box files come from users and the web; a `../../etc/passwd` entry must not be read.
    """
    if not relative or "\x00" in relative:
        raise ImageRejected("empty or invalid path")
    if os.path.isabs(relative) or Path(relative).is_absolute() or relative.startswith(("\\", "/")):
        raise ImageRejected(f"absolute path not allowed: {relative!r}")
    root_resolved = Path(root).resolve()
    candidate = (root_resolved / relative).resolve()
    if candidate != root_resolved and root_resolved not in candidate.parents:
        raise ImageRejected(f"path escapes the image root: {relative!r}")
    return candidate


@contextlib.contextmanager
def pixel_limit(max_pixels: int) -> Iterator[None]:
    """Let Pillow open images up to `max_pixels` for the duration (its own guard would refuse sizes above
    `Image.MAX_IMAGE_PIXELS` even when the caller allows them). Process-global: used once around a whole run."""
    old = Image.MAX_IMAGE_PIXELS
    if old is not None and max_pixels > old:
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; alpha is composited onto white (what a viewer shows)."""
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


def load_rgb_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open, fully decode, EXIF-orient and convert to RGB; raise `ImageRejected` with a reason on any failure.

    The pixel limit is checked on the header size, before decoding, so a bomb costs no memory. Pillow's own
    DecompressionBombWarning is turned into an error for this call as a second line of defence.
    """
    if max_pixels <= 0:
        raise ValueError("max_pixels must be positive")
    path = Path(path)
    if not path.is_file():
        raise ImageRejected("file not found" if not path.exists() else "not a regular file")
    if path.stat().st_size == 0:
        raise ImageRejected("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width <= 0 or height <= 0:
                    raise ImageRejected(f"invalid image size {width}x{height}")
                if width * height > max_pixels:
                    raise ImageRejected(
                        f"decompression bomb: {width}x{height} = {width * height} pixels > limit {max_pixels}"
                    )
                img.load()  # decode now, inside the try: truncated data fails here
                img = ImageOps.exif_transpose(img)
                rgb = _to_rgb(img)
                rgb.load()
                return rgb
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"decompression bomb: {exc}") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageRejected("not a recognised image format") from exc
    except MemoryError as exc:
        raise ImageRejected("out of memory while decoding") from exc
    except (OSError, SyntaxError, ValueError, TypeError, IndexError, struct.error) as exc:
        msg = str(exc) or type(exc).__name__
        if "truncated" in msg.lower():
            raise ImageRejected(f"truncated image: {msg}") from exc
        raise ImageRejected(f"corrupt image ({type(exc).__name__}): {msg}") from exc
