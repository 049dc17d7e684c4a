"""Every broken-image case is handled as documented: rejected with a reason, or converted to RGB."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagebert.extraction.images import ImageRejected, load_rgb_image, pixel_limit, safe_join


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def write_bomb_png(path: Path, side: int = 100_000) -> Path:
    """A valid PNG header claiming side x side pixels (1-bit gray), a few hundred bytes on disk."""
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024, 9)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )
    return path


def write_truncated_jpeg(path: Path) -> Path:
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def write_garbage_png(path: Path) -> Path:
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + np.random.default_rng(2).integers(0, 255, 400, dtype=np.uint8).tobytes()
    )
    return path


def write_exif_rotated_jpeg(path: Path) -> Path:
    """Stored 60 wide x 30 high, left half red; EXIF orientation 6 = display rotated 90 degrees clockwise."""
    arr = np.zeros((30, 60, 3), np.uint8)
    arr[:, :30] = (255, 0, 0)
    arr[:, 30:] = (0, 0, 255)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


def test_truncated_jpeg_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ImageRejected, match="truncated"):
        load_rgb_image(write_truncated_jpeg(tmp_path / "t.jpg"))


def test_garbage_with_png_header_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ImageRejected) as info:
        load_rgb_image(write_garbage_png(tmp_path / "g.png"))
    assert "corrupt" in info.value.reason or "not a recognised" in info.value.reason


def test_empty_missing_and_non_image(tmp_path: Path) -> None:
    (tmp_path / "e.jpg").write_bytes(b"")
    with pytest.raises(ImageRejected, match="empty"):
        load_rgb_image(tmp_path / "e.jpg")
    with pytest.raises(ImageRejected, match="not found"):
        load_rgb_image(tmp_path / "missing.jpg")
    (tmp_path / "x.jpg").write_text("hello, not an image")
    with pytest.raises(ImageRejected, match="not a recognised"):
        load_rgb_image(tmp_path / "x.jpg")


def test_decompression_bomb_is_rejected_before_decoding(tmp_path: Path) -> None:
    bomb = write_bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 1000
    with pytest.raises(ImageRejected, match="decompression bomb.*10000000000 pixels"):
        load_rgb_image(bomb)
    # With our own limit lifted, Pillow's guard still fires and is reported the same way.
    with pytest.raises(ImageRejected, match="decompression bomb"):
        load_rgb_image(bomb, max_pixels=10**12)
    # An explicit small limit rejects an ordinary image too.
    Image.new("RGB", (50, 50)).save(tmp_path / "ok.png")
    with pytest.raises(ImageRejected, match="2500 pixels > limit 1000"):
        load_rgb_image(tmp_path / "ok.png", max_pixels=1000)


def test_pixel_limit_can_be_raised_above_pillows(tmp_path: Path, monkeypatch) -> None:
    Image.new("RGB", (50, 50)).save(tmp_path / "ok.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageRejected, match="decompression bomb"):  # Pillow's guard, as an error
        load_rgb_image(tmp_path / "ok.png", max_pixels=5000)
    with pixel_limit(5000):
        assert load_rgb_image(tmp_path / "ok.png", max_pixels=5000).size == (50, 50)
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (32, 24), (0, 255, 255, 0)).save(tmp_path / "c.jpg", "JPEG", quality=95)  # pure red ink
    img = load_rgb_image(tmp_path / "c.jpg")
    assert img.mode == "RGB" and img.size == (32, 24)
    r, g, b = np.asarray(img).reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60


def test_grayscale_and_16bit_become_rgb(tmp_path: Path) -> None:
    Image.new("L", (20, 10), 77).save(tmp_path / "g.png")
    arr = np.asarray(load_rgb_image(tmp_path / "g.png"))
    assert arr.shape == (10, 20, 3) and (arr == 77).all()
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "g16.png")
    arr16 = np.asarray(load_rgb_image(tmp_path / "g16.png"))
    assert arr16.shape == (8, 8, 3) and (arr16 == 255).all()


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    arr = np.zeros((10, 10, 4), np.uint8)
    arr[..., 0] = 255  # red
    arr[:, :5, 3] = 255  # left half opaque
    arr[:, 5:, 3] = 0  # right half fully transparent
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    out = np.asarray(load_rgb_image(tmp_path / "a.png"))
    assert (out[:, :5] == (255, 0, 0)).all()
    assert (out[:, 5:] == (255, 255, 255)).all()
    # palette image with a transparent index
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 0, 0, 255, 0])
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png")
    assert (np.asarray(load_rgb_image(tmp_path / "p.png")) == 255).all()


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    img = load_rgb_image(write_exif_rotated_jpeg(tmp_path / "r.jpg"))
    assert img.size == (30, 60)  # width, height after the 90-degree turn
    arr = np.asarray(img).astype(int)
    top, bottom = arr[:25].mean((0, 1)), arr[35:].mean((0, 1))
    assert top[0] > 200 and top[2] < 60  # the red (left) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_safe_join_guards_traversal(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    assert safe_join(tmp_path, "sub/a.jpg") == (tmp_path / "sub" / "a.jpg").resolve()
    for bad in ("../x.jpg", "sub/../../x.jpg", "/etc/passwd", "", "a\x00b"):
        with pytest.raises(ImageRejected):
            safe_join(tmp_path, bad)
