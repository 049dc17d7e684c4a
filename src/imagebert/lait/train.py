"""`imagebert lait train-scorer`: labelled (image, text, related) rows -> a saved relevance model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from imagebert.errors import InputError
from imagebert.lait.config import LaitConfig
from imagebert.lait.scoring import text_image_features, train_scorer
from imagebert.lait.text import _WORD, oov_ratio

SOURCES = ("alt", "title", "og_description", "surrounding")


def read_labels(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise InputError("labels file not found", path=path)
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"not JSON: {exc.msg}", path=path, record=i) from None
        for key in ("image", "text", "related"):
            if key not in row:
                raise InputError("missing", path=path, record=i, field=key)
        if row["related"] not in (0, 1, True, False):
            raise InputError(f"must be 0 or 1, got {row['related']!r}", path=path, record=i, field="related")
        if row.get("source", "alt") not in SOURCES:
            raise InputError(f"must be one of {SOURCES}", path=path, record=i, field="source")
        img = Path(row["image"])
        if not img.is_absolute():
            img = path.parent / img
        if not img.is_file():
            raise InputError(f"image not found: {img}", path=path, record=i, field="image")
        rows.append({**row, "image": str(img), "_line": i})
    if len({int(r["related"]) for r in rows}) < 2:
        raise InputError("needs both related (1) and unrelated (0) rows", path=path, field="related")
    return rows


def train_from_jsonl(labels: str | Path, out: str | Path, cfg: LaitConfig) -> dict[str, Any]:
    rows = read_labels(labels)
    neural = None
    if cfg.scoring.neural:
        from imagebert.lait.neural import get_neural_features

        neural = get_neural_features(cfg.scoring.device)

    def features(row: dict) -> dict[str, float]:
        try:
            with Image.open(row["image"]) as im:
                width, height = im.size  # from the header: pixels are decoded only for the neural features
                rgb = im.convert("RGB") if neural is not None else None
        except Exception as exc:  # noqa: BLE001
            raise InputError(
                f"cannot decode image: {exc}", path=labels, record=row["_line"], field="image"
            ) from None
        words = _WORD.findall(row["text"])
        feats = text_image_features(
            row["text"],
            row.get("source", "alt"),
            len(words),
            oov_ratio(words, cfg.text.min_zipf_frequency),
            width,
            height,
        )
        if neural is not None:
            rgb.thumbnail((256, 256))
            feats.update(neural.cross_features(row["text"], neural.labels(rgb, cfg.scoring.top_labels)))
        return feats

    scorer, metrics = train_scorer(
        rows, features, neural=neural is not None, target_precision=cfg.scoring.target_precision
    )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    scorer.save(out)
    return metrics
