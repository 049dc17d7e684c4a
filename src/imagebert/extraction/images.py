"""Robust image loading for extraction: every bad file becomes an `ImageRejected` with a reason, never a crashed run.

The decoder is the shared `imagebert.runtime.images.decode_rgb`: unreadable / non-image / truncated files
(rejected), decompression bombs (rejected from the header, before any pixel is decoded, against an explicit pixel
limit), EXIF orientation (applied, so boxes refer to the image as displayed), and every colour mode converted to
RGB, transparent pixels composited onto white. This module adds the path rules of list files (`safe_join`).
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from imagebert.runtime.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_rgb, pixel_limit

__all__ = ["DEFAULT_MAX_PIXELS", "ImageRejected", "load_rgb_image", "pixel_limit", "safe_join"]


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


def load_rgb_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open, fully decode, EXIF-orient and convert to RGB; raise `ImageRejected` with a reason on any failure.

    The decoding and its guards are `imagebert.runtime.images.decode_rgb` (shared with LAIT): the pixel limit is
    checked on the header size, before decoding, so a bomb costs no memory.
    """
    try:
        return decode_rgb(path, max_pixels)
    except ImageDecodeError as exc:
        raise ImageRejected(exc.message) from exc
