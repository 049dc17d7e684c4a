"""The one image decoder: same guards and the same alpha rule for extraction and LAIT."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from imagebert.runtime.images import ImageDecodeError, decode_rgb, pillow_limits, to_rgb


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _bomb_png(side: int) -> bytes:
    """A valid PNG header claiming side x side pixels with a tiny (bogus) body: costs nothing unless decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _half_transparent_red() -> Image.Image:
    arr = np.zeros((6, 6, 4), np.uint8)
    arr[..., 0] = 255
    arr[:, :3, 3] = 255
    arr[:, 3:, 3] = 0
    return Image.fromarray(arr, "RGBA")


def test_bytes_and_paths_decode_alike_with_alpha_on_white(tmp_path):
    data = _png(_half_transparent_red())
    (tmp_path / "a.png").write_bytes(data)
    for source in (data, tmp_path / "a.png", str(tmp_path / "a.png")):
        out = np.asarray(decode_rgb(source))
        assert (out[:, :3] == (255, 0, 0)).all() and (out[:, 3:] == (255, 255, 255)).all()
    # a semi-transparent pixel is blended with white, not dropped to its raw colour
    semi = Image.new("RGBA", (2, 2), (0, 0, 0, 128))
    assert 120 < int(np.asarray(to_rgb(semi))[0, 0, 0]) < 135


def test_guards_name_the_problem(tmp_path):
    with pytest.raises(ImageDecodeError) as e:
        decode_rgb(b"")
    assert e.value.kind == "empty"
    with pytest.raises(ImageDecodeError) as e:
        decode_rgb(tmp_path / "missing.png")
    assert e.value.kind == "not_found"
    with pytest.raises(ImageDecodeError) as e:
        decode_rgb(b"not an image at all")
    assert e.value.kind == "unrecognised"
    truncated = _png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    with pytest.raises(ImageDecodeError) as e:
        decode_rgb(truncated[: len(truncated) // 2])
    assert e.value.kind in ("truncated", "corrupt")
    with pytest.raises(ImageDecodeError) as e:
        decode_rgb(_png(Image.new("RGB", (50, 50))), max_pixels=1000)
    assert e.value.kind == "decompression_bomb" and e.value.pixels == 2500


def test_bomb_is_refused_from_the_header_and_by_pillows_own_guard():
    bomb = _bomb_png(50_000)  # 2.5 G pixels claimed in a few dozen bytes
    assert len(bomb) < 200
    with pytest.raises(ImageDecodeError) as e:
        decode_rgb(bomb)
    assert e.value.kind == "decompression_bomb" and e.value.pixels == 2_500_000_000
    before = Image.MAX_IMAGE_PIXELS
    with pillow_limits(1_000_000), pytest.raises(ImageDecodeError) as e:
        decode_rgb(_bomb_png(3000), max_pixels=1_000_000)  # Pillow itself refuses at twice its limit
    assert e.value.kind == "decompression_bomb" and e.value.pixels == 9_000_000
    assert before == Image.MAX_IMAGE_PIXELS  # restored


def test_header_hook_runs_before_decoding():
    seen = []

    def hook(img: Image.Image) -> None:
        seen.append(img.size)
        raise LookupError("refused by the caller")

    with pytest.raises(LookupError):
        decode_rgb(_png(Image.new("RGB", (9, 7))), check_header=hook)
    assert seen == [(9, 7)]


def test_extraction_and_lait_share_the_alpha_rule():
    from imagebert.extraction.images import load_rgb_image  # noqa: F401 - the path-based wrapper
    from imagebert.lait.config import ImageConfig
    from imagebert.lait.images import decode_image

    img = _half_transparent_red().resize((600, 600), Image.Resampling.NEAREST)
    checked = decode_image(_png(img), ImageConfig())
    thumb = np.asarray(checked.thumb)
    assert (thumb[:, -60:] > 250).all()  # the transparent half is white in LAIT too (it used to be black)
    assert (thumb[:, :60, 0] > 250).all() and (thumb[:, :60, 1] < 5).all()
