"""Readers for the region-feature formats users already have. Each yields one `SourceItem` per image.

A `SourceItem` carries the image id when it is cheap to know (so a resumed import skips without decoding) and a
`parse()` that decodes and validates the record, raising InputError (with `.kind`, the skip-bad reason) that
names the file, the line or file, and the field. Reading streams: one row or one file in memory at a time.
Nothing is unpickled unless the caller passes `allow_pickle=True` (detectron2 npz `info` dicts only).
"""

from __future__ import annotations

import base64
import binascii
import csv
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagebert.data.store import _err
from imagebert.data.types import RegionRecord
from imagebert.errors import InputError

FORMATS = ("butd-tsv", "lxmert-tsv", "npz-butd", "npz-uniter", "hdf5")
BUTD_FIELDS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")
LXMERT_FIELDS = (
    "img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf", "num_boxes", "boxes",
    "features",
)  # fmt: skip
# A TSV row longer than this (256 MiB) is treated as corrupt rather than read into memory.
MAX_LINE_BYTES = 256 << 20


@dataclass
class SourceItem:
    path: Path
    record: int | str  # 1-based line number (TSV) or file/group name
    image_id: str | None  # known before parsing, or None
    parse: Callable[[], RegionRecord]
    raw: str  # what goes to the rejects file: the TSV line, or the file / group path


def _raise_field_limit() -> None:
    if csv.field_size_limit() < MAX_LINE_BYTES:
        csv.field_size_limit(MAX_LINE_BYTES)


def _int(value: Any, path: Path, rec: Any, field: str) -> int:
    try:
        out = int(np.asarray(value).item()) if not isinstance(value, str) else int(value.strip())
    except (TypeError, ValueError):
        raise _err(f"{str(value)[:40]!r} is not an integer", path, rec, field, "bad_value") from None
    return out


def _b64(text: str, dtype: str, path: Path, rec: Any, field: str) -> np.ndarray:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _err(f"not valid base64 ({exc})", path, rec, field, "bad_base64") from None
    item = np.dtype(dtype).itemsize
    if len(raw) % item:
        raise _err(
            f"base64 decodes to {len(raw)} bytes, not a whole number of {dtype} values",
            path,
            rec,
            field,
            "bad_base64",
        )
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))


def _shaped(arr: np.ndarray, n: int, width: int | None, path: Path, rec: Any, field: str) -> np.ndarray:
    """Reshape a flat array to n rows (of `width`, or of whatever width divides evenly)."""
    if width is None:
        if n <= 0 or arr.size % n or arr.size == 0:
            raise _err(
                f"{arr.size} values do not split into num_boxes={n} rows", path, rec, field, "count_mismatch"
            )
        width = arr.size // n
    if arr.size != n * width:
        raise _err(
            f"{arr.size} values, expected num_boxes={n} x {width} = {n * width}",
            path,
            rec,
            field,
            "count_mismatch",
        )
    return arr.reshape(n, width) if width != 1 else arr


# ---------------------------------------------------------------------------------------------------- TSV


def _iter_tsv(path: Path, fields: Sequence[str], parse_row: Callable[[list[str], Path, int], RegionRecord]):
    """Rows split on tabs by hand: the csv module's per-character parser is about 15x slower on 1 MB rows.

    Lines are read with a length cap (MAX_LINE_BYTES), so a file without newlines cannot fill memory. A row
    with a quoted field (csv.writer quotes fields holding tabs or quotes; ids almost never do) goes through
    the csv module, with its field size limit raised to the same cap.
    """
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below, generator lifetime
    except OSError as exc:
        raise InputError(f"cannot open: {exc.strerror}", path=path) from None
    with handle:
        line_no = 0
        while True:
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            line_no += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # drop the rest of the oversized line
                    raw = handle.readline(MAX_LINE_BYTES + 1)
                err = _err(f"row longer than {MAX_LINE_BYTES} bytes", path, line_no, fields[0], "too_large")
                yield SourceItem(path, line_no, None, _raiser(err), "")
                continue
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                err = _err(f"not UTF-8 ({exc.reason})", path, line_no, fields[0], "unreadable")
                yield SourceItem(path, line_no, None, _raiser(err), raw[:1000].decode("latin-1"))
                continue
            if not text.strip():
                continue
            row = text.split("\t")
            if '"' in text:
                _raise_field_limit()
                try:
                    row = next(csv.reader([text], delimiter="\t"))
                except csv.Error as exc:
                    err = _err(f"unreadable row ({exc})", path, line_no, fields[0], "unreadable")
                    yield SourceItem(path, line_no, None, _raiser(err), text)
                    continue
            if line_no == 1 and row[0] == fields[0]:
                continue  # a header row some converters add
            yield SourceItem(
                path, line_no, row[0].strip(), (lambda r=row, ln=line_no: parse_row(r, path, ln)), text
            )


def _raiser(exc: Exception) -> Callable[[], RegionRecord]:
    def parse() -> RegionRecord:
        raise exc

    return parse


def _check_columns(row: list[str], fields: Sequence[str], path: Path, line: int) -> None:
    if len(row) < len(fields):
        raise _err(
            f"row has {len(row)} of {len(fields)} columns (truncated?)",
            path,
            line,
            fields[len(row)],
            "truncated_row",
        )
    if len(row) > len(fields):
        raise _err(f"row has {len(row)} columns, expected {len(fields)}", path, line, fields[-1], "bad_row")


def parse_butd_row(row: list[str], path: Path, line: int) -> RegionRecord:
    """bottom-up-attention generate_tsv.py: image_id, image_w, image_h, num_boxes, boxes, features."""
    _check_columns(row, BUTD_FIELDS, path, line)
    w = _int(row[1], path, line, "image_w")
    h = _int(row[2], path, line, "image_h")
    n = _int(row[3], path, line, "num_boxes")
    boxes = _shaped(_b64(row[4], "float32", path, line, "boxes"), n, 4, path, line, "boxes")
    feats = _shaped(_b64(row[5], "float32", path, line, "features"), n, None, path, line, "features")
    return RegionRecord(row[0].strip(), feats, boxes, w, h)


def parse_lxmert_row(row: list[str], path: Path, line: int) -> RegionRecord:
    """LXMERT TSV: img_id, img_h, img_w, objects_id, objects_conf, attrs_id, attrs_conf, num_boxes, boxes, features."""
    _check_columns(row, LXMERT_FIELDS, path, line)
    h = _int(row[1], path, line, "img_h")
    w = _int(row[2], path, line, "img_w")
    n = _int(row[7], path, line, "num_boxes")
    obj_id = _shaped(_b64(row[3], "int64", path, line, "objects_id"), n, 1, path, line, "objects_id")
    obj_conf = _shaped(_b64(row[4], "float32", path, line, "objects_conf"), n, 1, path, line, "objects_conf")
    _shaped(_b64(row[5], "int64", path, line, "attrs_id"), n, 1, path, line, "attrs_id")
    _shaped(_b64(row[6], "float32", path, line, "attrs_conf"), n, 1, path, line, "attrs_conf")
    boxes = _shaped(_b64(row[8], "float32", path, line, "boxes"), n, 4, path, line, "boxes")
    feats = _shaped(_b64(row[9], "float32", path, line, "features"), n, None, path, line, "features")
    return RegionRecord(
        row[0].strip(), feats, boxes, w, h, obj_id.astype(np.int64), obj_conf.astype(np.float32)
    )


# ---------------------------------------------------------------------------------------------------- npz


def _npz_files(sources: Sequence[Path]) -> Iterator[Path]:
    for src in sources:
        if src.is_dir():
            yield from sorted(p for p in src.rglob("*.npz") if p.is_file())
        elif src.is_file():
            yield src
        else:
            raise InputError("no such file or folder", path=src)


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members, an empty zip
_NPY_MAGIC = b"\x93NUMPY"


def _open_npz(path: Path) -> Any:
    """An npz archive, refused by its first bytes when it is not one: np.load would call random bytes
    "pickled data" (it falls back to unpickling) and return a bare array for a renamed .npy."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise _err(f"cannot open ({exc.strerror})", path, path.name, None, "unreadable") from None
    if not magic:
        raise _err("empty file", path, path.name, None, "unreadable")
    if magic.startswith(_NPY_MAGIC):
        raise _err(
            "a single .npy array, not an .npz archive of named arrays", path, path.name, None, "unreadable"
        )
    if magic[:4] not in _ZIP_MAGIC:
        raise _err(
            f"not an npz (zip) archive: starts with {magic[:4]!r}", path, path.name, None, "unreadable"
        )
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise _err(f"unreadable npz ({exc})", path, path.name, None, "unreadable") from None


def _npz_get(npz: Any, key: str, path: Path, *, required: bool = True) -> np.ndarray | None:
    if key not in npz.files:
        if required:
            raise _err(
                f"key '{key}' missing (has {sorted(npz.files)})", path, path.name, key, "missing_field"
            )
        return None
    try:
        return npz[key]
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise _pickled(path, key) from None
        raise _err(f"unreadable array ({exc})", path, path.name, key, "unreadable") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise _err(f"unreadable array ({exc})", path, path.name, key, "unreadable") from None


def _pickled(path: Path, key: str) -> InputError:
    return _err(
        f"key '{key}' holds a pickled Python object; unpickling can run arbitrary code, so it is refused by "
        "default. Re-run with --allow-pickle (allow_pickle=True) only for files you trust",
        path, path.name, key, "pickled_key",
    )  # fmt: skip


def _float_array(arr: np.ndarray, path: Path, key: str) -> np.ndarray:
    if arr.dtype.kind not in "fiu":
        raise _err(f"dtype {arr.dtype} is not numeric", path, path.name, key, "bad_value")
    return arr


def parse_npz_butd(path: Path, allow_pickle: bool = False) -> RegionRecord:
    """bottom-up-attention.pytorch (detectron2): x, bbox, num_bbox, image_h, image_w, info (pickled dict)."""
    with _open_npz(path) as npz:
        feats = _float_array(_npz_get(npz, "x", path), path, "x")
        boxes = _float_array(_npz_get(npz, "bbox", path), path, "bbox")
        n = _int(_npz_get(npz, "num_bbox", path), path, path.name, "num_bbox")
        h = _int(_npz_get(npz, "image_h", path), path, path.name, "image_h")
        w = _int(_npz_get(npz, "image_w", path), path, path.name, "image_w")
        has_info = "info" in npz.files
        if has_info and not allow_pickle:
            _npz_get(
                npz, "info", path
            )  # raises the pickle error for an object array; plain arrays fall through
    if feats.ndim != 2 or feats.shape[0] != n:
        raise _err(f"shape {feats.shape} does not match num_bbox={n}", path, path.name, "x", "count_mismatch")
    if boxes.shape != (n, 4):
        raise _err(
            f"shape {boxes.shape} does not match num_bbox={n} x 4", path, path.name, "bbox", "count_mismatch"
        )
    cids = conf = None
    if has_info and allow_pickle:
        try:
            with np.load(path, allow_pickle=True) as npz:  # opted in: the caller trusts this file
                info = npz["info"].item()
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is bad input
            raise _err(f"cannot read info ({exc})", path, path.name, "info", "unreadable") from None
        if not isinstance(info, dict):
            raise _err(f"expected a dict, got {type(info).__name__}", path, path.name, "info", "bad_value")
        if "objects_id" in info:
            cids = _shaped(
                np.asarray(info["objects_id"]).reshape(-1), n, 1, path, path.name, "info.objects_id"
            )
            cids = cids.astype(np.int64)
        if "objects_conf" in info:
            conf = _shaped(
                np.asarray(info["objects_conf"]).reshape(-1), n, 1, path, path.name, "info.objects_conf"
            )
            conf = conf.astype(np.float32)
    return RegionRecord(path.stem, feats, boxes.astype(np.float32), w, h, cids, conf)


def parse_npz_uniter(path: Path, image_sizes: dict[str, tuple[int, int]] | None = None) -> RegionRecord:
    """UNITER npz: features, norm_bb (N x 6, normalised), conf, soft_labels (N x 1601, column 0 background).

    The file has no image size: with `image_sizes[image_id] = (W, H)` boxes become pixels; without it boxes stay
    normalised and W = H = 1, which gives the same 5-d region locations.
    """
    with _open_npz(path) as npz:
        feats = _float_array(_npz_get(npz, "features", path), path, "features")
        norm_bb = _float_array(_npz_get(npz, "norm_bb", path), path, "norm_bb")
        conf = _npz_get(npz, "conf", path, required=False)
        soft = _npz_get(npz, "soft_labels", path, required=False)
    if feats.ndim != 2:
        raise _err(f"expected 2-D, got shape {feats.shape}", path, path.name, "features", "bad_shape")
    n = feats.shape[0]
    if norm_bb.ndim != 2 or norm_bb.shape[0] != n or norm_bb.shape[1] < 4:
        raise _err(
            f"shape {norm_bb.shape} does not match {n} boxes", path, path.name, "norm_bb", "count_mismatch"
        )
    w, h = (1, 1)
    if image_sizes is not None:
        if path.stem not in image_sizes:
            raise _err("image size not in --image-sizes", path, path.name, "image_size", "missing_field")
        w, h = image_sizes[path.stem]
    boxes = norm_bb[:, :4].astype(np.float32) * np.array([w, h, w, h], dtype=np.float32)
    cids = probs = None
    if conf is not None:
        conf = _shaped(np.asarray(conf, dtype=np.float32).reshape(-1), n, 1, path, path.name, "conf")
    if soft is not None:
        if soft.ndim != 2 or soft.shape[0] != n or soft.shape[1] < 2:
            raise _err(
                f"shape {soft.shape} does not match {n} boxes",
                path,
                path.name,
                "soft_labels",
                "count_mismatch",
            )
        probs = soft[:, 1:]
        cids = probs.argmax(axis=1).astype(np.int64)
        if conf is None:
            conf = probs.max(axis=1).astype(np.float32)
    return RegionRecord(path.stem, feats, boxes, w, h, cids, conf, probs)


# ---------------------------------------------------------------------------------------------------- HDF5


def _iter_hdf5(path: Path) -> Iterator[SourceItem]:
    """Layout: one group per image at the root, named by image id, holding `features` (N x D), `boxes` (N x 4,
    pixels), `image_w`/`image_h` (group attributes or scalar datasets) and optionally `class_ids` (N),
    `class_confidences` (N) and `class_probs` (N x K, no background column)."""
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - h5py is an optional extra
        raise InputError("reading HDF5 needs h5py (pip install h5py)", path=path) from exc
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"cannot open as HDF5 ({exc})", path=path) from None
    with handle:
        for name in handle:
            yield SourceItem(
                path, name, name, (lambda n=name: _parse_hdf5_group(handle, n, path)), f"{path}:/{name}"
            )


def _parse_hdf5_group(handle: Any, name: str, path: Path) -> RegionRecord:
    grp = handle[name]
    if not hasattr(grp, "keys"):
        raise _err("expected a group per image", path, name, None, "bad_row")

    def get(key: str, required: bool = True) -> Any:
        if key in grp:
            return grp[key][()]
        if key in grp.attrs:
            return grp.attrs[key]
        if required:
            raise _err(f"'{key}' missing (has {sorted(grp.keys())})", path, name, key, "missing_field")
        return None

    feats = _float_array(np.asarray(get("features")), path, "features")
    boxes = _float_array(np.asarray(get("boxes")), path, "boxes").astype(np.float32)
    w = _int(get("image_w"), path, name, "image_w")
    h = _int(get("image_h"), path, name, "image_h")
    cids, conf, probs = get("class_ids", False), get("class_confidences", False), get("class_probs", False)
    return RegionRecord(
        name, feats, boxes, w, h,
        None if cids is None else np.asarray(cids, dtype=np.int64),
        None if conf is None else np.asarray(conf, dtype=np.float32),
        None if probs is None else np.asarray(probs),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------- entry


def iter_source(
    fmt: str,
    sources: Sequence[str | Path],
    *,
    allow_pickle: bool = False,
    image_sizes: dict[str, tuple[int, int]] | None = None,
) -> Iterator[SourceItem]:
    """Every image in `sources` (files, or folders of npz files) in format `fmt`, one item at a time."""
    paths = [Path(s) for s in sources]
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt in ("butd-tsv", "lxmert-tsv"):
        fields, parse = (
            (BUTD_FIELDS, parse_butd_row) if fmt == "butd-tsv" else (LXMERT_FIELDS, parse_lxmert_row)
        )
        for p in paths:
            if not p.is_file():
                raise InputError("no such file", path=p)
            yield from _iter_tsv(p, fields, parse)
    elif fmt in ("npz-butd", "npz-uniter"):
        for p in _npz_files(paths):
            if fmt == "npz-butd":
                fn = lambda p=p: parse_npz_butd(p, allow_pickle)  # noqa: E731
            else:
                fn = lambda p=p: parse_npz_uniter(p, image_sizes)  # noqa: E731
            yield SourceItem(p, p.name, p.stem, fn, str(p))
    else:
        for p in paths:
            if not p.is_file():
                raise InputError("no such file", path=p)
            yield from _iter_hdf5(p)


def read_image_sizes(path: str | Path) -> dict[str, tuple[int, int]]:
    """TSV with header `image_id\\twidth\\theight`: the sizes UNITER npz files lack."""
    path = Path(path)
    out: dict[str, tuple[int, int]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header != ["image_id", "width", "height"]:
            raise InputError(
                "header must be image_id<TAB>width<TAB>height", path=path, record=1, field="header"
            )
        for row in reader:
            if len(row) != 3:
                raise InputError("expected 3 columns", path=path, record=reader.line_num, field="image_id")
            out[row[0]] = (
                _int(row[1], path, reader.line_num, "width"),
                _int(row[2], path, reader.line_num, "height"),
            )
    return out
