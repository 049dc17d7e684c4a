"""Caption readers: the Karpathy split JSON (Flickr30k and COCO) and web caption lists (TSV / JSONL).

Image ids must equal the feature store's keys. The defaults follow what the feature extractors write:
Flickr30k uses the file name stem (`1000092795.jpg` -> `1000092795`), COCO uses `cocoid` (`391895`); both are the
`image_id` column of the public bottom-up-attention TSVs. `image_id="stem"|"cocoid"|"imgid"|"filename"` overrides.
`dataset="karpathy"` reads any file in the Karpathy layout (your own captions): `auto` ids are the file name stem
(what `imagebert extract` names images), or `imgid` for entries without a file name.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from imagebert.data.store import validate_image_id
from imagebert.data.types import Caption
from imagebert.errors import InputError

ID_CHOICES = ("auto", "stem", "cocoid", "imgid", "filename")
KARPATHY_DATASETS = ("karpathy", "flickr30k", "flickr8k", "coco")
MAX_CAPTION_CHARS = 10_000


def _karpathy_image_id(img: dict[str, Any], dataset: str, image_id: str, path: Path, rec: str) -> str:
    choice = image_id
    if choice == "auto":
        choice = "cocoid" if dataset == "coco" else "stem"
        if dataset == "karpathy" and not img.get("filename") and "imgid" in img:
            choice = "imgid"
    if choice in ("stem", "filename"):
        name = img.get("filename")
        if not isinstance(name, str) or not name:
            raise InputError("missing or empty", path=path, record=rec, field="filename")
        value: Any = Path(name).stem if choice == "stem" else Path(name).name
    else:
        if choice not in img:
            raise InputError(f"missing (image_id convention '{choice}')", path=path, record=rec, field=choice)
        value = img[choice]
    return validate_image_id(value, path=path, record=rec, field=choice)


def read_karpathy_json(
    path: str | os.PathLike, dataset: str = "flickr30k", image_id: str = "auto"
) -> list[Caption]:
    """All captions of a Karpathy split file; `Caption.split` is the image's split (train/restval/val/test).

    `dataset` only chooses the `auto` id convention: coco -> cocoid, the others -> file name stem."""
    path = Path(path)
    if dataset not in KARPATHY_DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(KARPATHY_DATASETS)}, got {dataset!r}")
    if image_id not in ID_CHOICES:
        raise ValueError(f"image_id must be one of {ID_CHOICES}, got {image_id!r}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", path=path) from None
    except UnicodeDecodeError as exc:
        raise InputError(
            f"not UTF-8 ({exc.reason})", path=path, record=f"byte {exc.start}", field="json"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"unreadable JSON: {exc.msg} (column {exc.colno})", path=path, record=exc.lineno,
                         field="json") from None  # fmt: skip
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise InputError("expected a top-level object with an 'images' list", path=path, field="images")
    out: list[Caption] = []
    for i, img in enumerate(images):
        rec = f"images[{i}]"
        if not isinstance(img, dict):
            raise InputError("expected an object", path=path, record=rec)
        iid = _karpathy_image_id(img, dataset, image_id, path, rec)
        split = img.get("split")
        if not isinstance(split, str) or not split:
            raise InputError("missing or empty", path=path, record=rec, field="split")
        sentences = img.get("sentences")
        if not isinstance(sentences, list):
            raise InputError("expected a list", path=path, record=rec, field="sentences")
        for j, sent in enumerate(sentences):
            srec = f"{rec}.sentences[{j}]"
            if not isinstance(sent, dict):
                raise InputError("expected an object", path=path, record=srec)
            raw = sent.get("raw")
            if not isinstance(raw, str) or not raw.strip():
                tokens = sent.get("tokens")
                if not isinstance(tokens, list) or not tokens:
                    raise InputError("no 'raw' text and no 'tokens'", path=path, record=srec, field="raw")
                raw = " ".join(str(t) for t in tokens)
            sid = sent.get("sentid", f"{iid}#{j}")
            out.append(Caption(iid, raw.strip(), str(sid), split, path.name))
    return out


def read_caption_list(path: str | os.PathLike, split: str = "train") -> list[Caption]:
    """Captions from `.jsonl` (keys `image_id`, `caption`, optional `caption_id`, `split`) or `.tsv`/`.txt`
    (header row `image_id<TAB>caption`, optional further columns `caption_id`, `split`)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path, split)
    if suffix in (".tsv", ".txt", ".csv"):
        return _read_tsv(path, split)
    raise InputError("unknown caption list type: use .jsonl or .tsv", path=path)


def _caption(row: dict[str, Any], path: Path, line: int, split: str) -> Caption:
    iid = validate_image_id(row.get("image_id"), path=path, record=line)
    text = row.get("caption")
    if not isinstance(text, str) or not text.strip():
        raise InputError("missing or empty", path=path, record=line, field="caption")
    if len(text) > MAX_CAPTION_CHARS:
        raise InputError(
            f"longer than {MAX_CAPTION_CHARS} characters", path=path, record=line, field="caption"
        )
    cid = row.get("caption_id") or f"{path.stem}:{line}"
    return Caption(iid, " ".join(text.split()), str(cid), str(row.get("split") or split), path.name)


def _read_jsonl(path: Path, split: str) -> list[Caption]:
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(
                        f"unreadable JSON: {exc.msg}", path=path, record=line_no, field="json"
                    ) from None
                if not isinstance(row, dict):
                    raise InputError("expected a JSON object", path=path, record=line_no, field="json")
                out.append(_caption(row, path, line_no, split))
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 ({exc.reason})", path=path, field="json") from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", path=path) from None
    return out


def _read_tsv(path: Path, split: str) -> list[Caption]:
    out = []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None)
            if not header or header[:2] != ["image_id", "caption"]:
                raise InputError("first row must be the header image_id<TAB>caption", path=path, record=1,
                                 field="header")  # fmt: skip
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise InputError(f"{len(row)} columns, header has {len(header)}", path=path,
                                     record=reader.line_num, field=header[min(len(row), len(header) - 1)])  # fmt: skip
                out.append(_caption(dict(zip(header, row)), path, reader.line_num, split))
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 ({exc.reason})", path=path, field="caption") from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", path=path) from None
    return out
