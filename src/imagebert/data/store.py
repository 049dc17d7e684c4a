"""The region-feature store: one LMDB environment holding every image's regions in a compact binary record.

Why LMDB: O(1) lookups by key without an in-memory index, zero-copy memory-mapped reads that the OS page cache
bounds (so RAM use does not grow with the corpus), ordered keys for sequential streaming, atomic transactions
(an interrupted import loses at most the open batch and never corrupts what was committed), and many concurrent
readers across processes. Records are numpy raw bytes behind a fixed 32-byte header; nothing is pickled.

Keys: ``r/<image_id>`` -> record, ``m/meta`` -> JSON (width, dtype, box selection, running statistics),
``m/complete`` -> written in the import's last transaction; a store without it is refused.

Integrity: every record written since checksums were added ends in an 8-byte trailer holding the CRC-32 of the image
id and the record bytes before it (header flag 8); reads verify it, and `imagebert features verify` checks every
record. Stores written before keep opening (their records have no trailer; verify says so). Before LMDB maps
`data.mdb` its size is checked against the environment's own header, so a truncated copy is an error rather than a
bus error. One writer at a time: FeatureStoreWriter holds an exclusive lock (imagebert.runlock) while open.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

from imagebert.data.types import RegionRecord
from imagebert.errors import InputError
from imagebert.runlock import WriterLock

FORMAT_VERSION = 1
MAGIC = b"IBR1"
# magic, version, flags, feature dtype, probs dtype, N, D, K, W, H, run
_HEADER = struct.Struct("<4sBBBBIIIIII")
assert _HEADER.size == 32
_FLAG_CLASS_IDS = 1
_FLAG_CONF = 2
_FLAG_PROBS = 4
_FLAG_CRC = 8  # an 8-byte trailer: CRC-32 (little-endian uint32) of id + record bytes before it, 4 zero bytes
_TRAILER = struct.Struct("<II")
_FP16_MAX = float(np.finfo(np.float16).max)
_FP32_MAX = float(np.finfo(np.float32).max)
_DTYPES = {1: np.dtype("<f2"), 2: np.dtype("<f4")}
_DTYPE_CODES = {"float16": 1, "float32": 2}

REC_PREFIX = b"r/"
META_KEY = b"m/meta"
COMPLETE_KEY = b"m/complete"

MAX_ID_BYTES = 256
MAX_BOXES = 4096
MAX_FEATURE_DIM = 65536
MAX_CLASSES = 100_000
_INITIAL_MAP_SIZE = 1 << 30
_BATCH_RECORDS = 256
_BATCH_BYTES = 32 << 20


def validate_image_id(image_id: Any, *, path: Any = None, record: Any = None, field: str = "image_id") -> str:
    """Image ids become LMDB keys and, downstream, file names: keep them short, printable and path-free."""
    if isinstance(image_id, bytes):
        image_id = image_id.decode("utf-8", errors="replace")
    if isinstance(image_id, int | np.integer):
        image_id = str(int(image_id))
    if not isinstance(image_id, str):
        raise _err(f"image id must be a string, got {type(image_id).__name__}", path, record, field, "bad_id")
    image_id = image_id.strip()
    if not image_id:
        raise _err("image id is empty", path, record, field, "bad_id")
    if len(image_id.encode("utf-8")) > MAX_ID_BYTES:
        raise _err(f"image id longer than {MAX_ID_BYTES} bytes", path, record, field, "bad_id")
    if any(ord(c) < 32 or c == "\x7f" for c in image_id):
        raise _err("image id contains control characters", path, record, field, "bad_id")
    if "/" in image_id or "\\" in image_id or image_id in (".", "..") or image_id.startswith("~"):
        raise _err(
            f"image id {image_id!r} looks like a path (path separators or '..')",
            path,
            record,
            field,
            "bad_id",
        )
    return image_id


def _err(msg: str, path: Any, record: Any, field: str | None, kind: str) -> InputError:
    exc = InputError(msg, path=path, record=record, field=field)
    exc.kind = kind  # type: ignore[attr-defined]  # skip-bad counts by this reason
    return exc


@dataclass(frozen=True)
class BoxSelection:
    """Which boxes to keep: the `top_n` most confident, or those with confidence >= `min_confidence`,
    their count clipped to [`min_boxes`, `max_boxes`] (the bottom-up-attention rule).

    Kept boxes keep their source order. Without per-box confidences (plain bottom-up-attention TSV) the first
    boxes are kept, since extractors write boxes in score order.
    """

    top_n: int | None = None
    min_confidence: float | None = None
    min_boxes: int = 10
    max_boxes: int = 100

    def __post_init__(self) -> None:
        if self.top_n is None and self.min_confidence is None:
            object.__setattr__(self, "top_n", 100)
        self.validate()

    def validate(self) -> None:
        """ConfigError (a ValueError) for a selection that cannot be applied."""
        from imagebert.config_utils import ConfigError

        if self.top_n is not None and self.min_confidence is not None:
            raise ConfigError("BoxSelection: give top_n or min_confidence, not both")
        if self.top_n is not None and self.top_n < 1:
            raise ConfigError("BoxSelection: top_n must be >= 1")
        if self.min_confidence is not None and not (1 <= self.min_boxes <= self.max_boxes):
            raise ConfigError("BoxSelection: need 1 <= min_boxes <= max_boxes")

    def count(self, num_boxes: int, confidences: np.ndarray | None) -> int:
        """How many boxes are kept (`top_n` never reads `confidences`)."""
        if self.top_n is not None:
            return min(self.top_n, num_boxes)
        k = num_boxes if confidences is None else int((confidences >= self.min_confidence).sum())
        return max(min(k, self.max_boxes), min(self.min_boxes, num_boxes))

    def indices(self, num_boxes: int, confidences: np.ndarray | None) -> np.ndarray:
        """Indices (ascending) of the boxes to keep."""
        k = self.count(num_boxes, confidences)
        if k >= num_boxes:
            return np.arange(num_boxes)
        if confidences is None:
            return np.arange(k)
        order = np.argsort(-confidences.astype(np.float64), kind="stable")[:k]
        return np.sort(order)

    def apply(self, record: RegionRecord) -> RegionRecord:
        keep = self.indices(record.num_boxes, record.class_confidences)
        if len(keep) == record.num_boxes:
            return record
        return RegionRecord(
            image_id=record.image_id,
            features=record.features[keep],
            boxes=record.boxes[keep],
            image_width=record.image_width,
            image_height=record.image_height,
            class_ids=None if record.class_ids is None else record.class_ids[keep],
            class_confidences=None if record.class_confidences is None else record.class_confidences[keep],
            class_probs=None if record.class_probs is None else record.class_probs[keep],
        )

    def to_dict(self) -> dict[str, Any]:
        if self.top_n is not None:
            return {"top_n": self.top_n}
        return {
            "min_confidence": self.min_confidence,
            "min_boxes": self.min_boxes,
            "max_boxes": self.max_boxes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> BoxSelection | None:
        return None if not data else cls(**data)


# ---------------------------------------------------------------------------------------------- record codec


def _pad8(n: int) -> int:
    return (n + 7) & ~7


def _finite(arr: np.ndarray) -> bool:
    return bool(np.isfinite(arr).all())


def check_record(record: RegionRecord, *, path: Any = None, where: Any = None) -> None:
    """Shapes, sizes and finiteness, with an InputError naming the field at fault."""
    rec = where if where is not None else record.image_id
    feats, boxes = record.features, record.boxes
    if not isinstance(feats, np.ndarray) or feats.ndim != 2:
        raise _err("features must be a 2-D array (boxes x width)", path, rec, "features", "bad_shape")
    n, d = feats.shape
    if n == 0:
        raise _err("image has no boxes", path, rec, "num_boxes", "no_boxes")
    if n > MAX_BOXES:
        raise _err(f"{n} boxes exceeds the cap of {MAX_BOXES}", path, rec, "num_boxes", "too_large")
    if not 1 <= d <= MAX_FEATURE_DIM:
        raise _err(f"feature width {d} outside [1, {MAX_FEATURE_DIM}]", path, rec, "features", "bad_shape")
    if not isinstance(boxes, np.ndarray) or boxes.shape != (n, 4):
        shape = getattr(boxes, "shape", None)
        raise _err(f"boxes shape {shape} does not match {n} boxes x 4", path, rec, "boxes", "count_mismatch")
    for name, arr in (("class_ids", record.class_ids), ("class_confidences", record.class_confidences)):
        if arr is not None and np.shape(arr) != (n,):
            raise _err(
                f"{name} shape {np.shape(arr)} does not match {n} boxes", path, rec, name, "count_mismatch"
            )
    if record.class_probs is not None:
        p = record.class_probs
        if p.ndim != 2 or p.shape[0] != n or not 1 <= p.shape[1] <= MAX_CLASSES:
            raise _err(
                f"class_probs shape {p.shape} does not match {n} boxes",
                path,
                rec,
                "class_probs",
                "count_mismatch",
            )
    for name, arr in (
        ("features", feats),
        ("boxes", boxes),
        ("class_confidences", record.class_confidences),
        ("class_probs", record.class_probs),
    ):
        if arr is not None and arr.dtype.kind == "f" and not _finite(arr):
            raise _err("contains NaN or infinite values", path, rec, name, "non_finite")
    flipped = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if flipped.any():
        i = int(np.argmax(flipped))
        raise _err(
            f"box {i} {boxes[i].tolist()} has x2 < x1 or y2 < y1 (boxes are x1, y1, x2, y2)",
            path, rec, "boxes", "bad_box",
        )  # fmt: skip
    for name, val in (("image_width", record.image_width), ("image_height", record.image_height)):
        try:
            ok = int(val) == val and 0 < int(val) < 2**31
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise _err(f"{val!r} is not a positive integer", path, rec, name, "bad_value")


def _cast_checked(arr: np.ndarray, dtype: str, field: str, path: Any, rec: Any) -> bytes:
    """`arr` cast to the storage dtype; a finite value that becomes inf there (1e6 in fp16) is an InputError."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.asarray(arr).astype(dtype, copy=False)
    if out.dtype.kind == "f" and np.asarray(arr).dtype.kind in "fiu" and not _finite(out):
        bad = np.argwhere(~np.isfinite(out))[0]
        value = np.asarray(arr)[tuple(bad)]
        at = f"box {bad[0]}" + (f", column {bad[1]}" if len(bad) > 1 else "")
        limit = _FP16_MAX if np.dtype(dtype).itemsize == 2 else _FP32_MAX
        hint = "; import with --dtype float32" if field == "features" and limit == _FP16_MAX else ""
        raise _err(
            f"value {float(value):g} at {at} is outside the stored {np.dtype(dtype).name} range "
            f"(|x| <= {limit:g}){hint}",
            path, rec, field, "out_of_range",
        )  # fmt: skip
    return out.tobytes()


def _crc(image_id: str, body: bytes | bytearray | memoryview) -> int:
    return zlib.crc32(body, zlib.crc32(image_id.encode("utf-8")))


def encode_record(
    record: RegionRecord,
    dtype: str = "float16",
    run: int = 0,
    *,
    image_id: str | None = None,
    path: Any = None,
    where: Any = None,
) -> bytes:
    """RegionRecord -> bytes: 32-byte header, each array's raw little-endian bytes padded to 8 bytes, then the
    CRC trailer. Values that do not fit the storage dtype raise InputError naming the field (`path`, `where`)."""
    image_id = record.image_id if image_id is None else image_id
    rec = where if where is not None else image_id
    n, d = record.features.shape
    fdt = _DTYPES[_DTYPE_CODES[dtype]]
    flags = _FLAG_CRC
    parts: list[bytes] = [
        _cast_checked(record.features, fdt.str, "features", path, rec),
        _cast_checked(record.boxes, "<f4", "boxes", path, rec),
    ]
    if record.class_ids is not None:
        flags |= _FLAG_CLASS_IDS
        ids = np.asarray(record.class_ids)
        if ids.size and (ids.min() < -(2**31) or ids.max() >= 2**31):
            raise _err("class id outside the int32 range", path, rec, "class_ids", "out_of_range")
        parts.append(ids.astype("<i4").tobytes())
    if record.class_confidences is not None:
        flags |= _FLAG_CONF
        parts.append(_cast_checked(record.class_confidences, "<f4", "class_confidences", path, rec))
    k = 0
    if record.class_probs is not None:
        flags |= _FLAG_PROBS
        k = record.class_probs.shape[1]
        parts.append(_cast_checked(record.class_probs, "<f2", "class_probs", path, rec))
    header = _HEADER.pack(
        MAGIC, FORMAT_VERSION, flags, _DTYPE_CODES[dtype], 1, n, d, k, int(record.image_width),
        int(record.image_height), run,
    )  # fmt: skip
    out = bytearray(header)
    for p in parts:
        out += p
        out += b"\0" * (_pad8(len(p)) - len(p))
    out += _TRAILER.pack(_crc(image_id, out), 0)
    return bytes(out)


def read_header(buf: Any) -> tuple:
    magic, version, flags, fcode, pcode, n, d, k, w, h, run = _HEADER.unpack_from(buf, 0)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise ValueError(f"not an imagebert region record (magic {magic!r}, version {version})")
    return flags, fcode, pcode, n, d, k, w, h, run


class CorruptRecordError(InputError):
    """A stored record whose checksum or layout does not match its bytes (a damaged data.mdb)."""


def record_checksum_state(image_id: str, buf: Any) -> bool | None:
    """True: the CRC trailer matches; False: it does not (or the record is too short); None: no checksum."""
    if len(buf) < _HEADER.size or not (buf[5] & _FLAG_CRC):
        return None
    if len(buf) < _HEADER.size + _TRAILER.size:
        return False
    body = memoryview(buf)[: len(buf) - _TRAILER.size]
    stored, _zero = _TRAILER.unpack_from(buf, len(buf) - _TRAILER.size)
    return _crc(image_id, body) == stored


def decode_record(
    image_id: str, buf: Any, *, path: Any = None, require_checksum: bool = False
) -> RegionRecord:
    """bytes -> RegionRecord with writable arrays (one copy of the buffer; arrays are views into it).

    The CRC trailer is verified when present (or required: stores created with checksums); a mismatch or a
    layout that does not fit the bytes raises CorruptRecordError naming the store and the image id."""
    data = bytearray(buf)
    state = record_checksum_state(image_id, data)
    if state is False or (state is None and require_checksum):
        what = "checksum mismatch" if state is False else "checksum missing"
        raise CorruptRecordError(
            f"{what}: the stored bytes are damaged; run `imagebert features verify` and re-import",
            path=path, record=image_id, field="checksum",
        )  # fmt: skip
    try:
        return _decode(image_id, data)
    except (ValueError, struct.error) as exc:
        raise CorruptRecordError(
            f"unreadable record ({exc})", path=path, record=image_id, field="record"
        ) from None


def _sections(buf: Any) -> tuple[dict[str, np.ndarray], int, int]:
    """The record's arrays as views into `buf` (features, boxes and whichever optional columns its flags say it
    holds), and its width and height: the one place that knows the layout behind the header."""
    flags, fcode, pcode, n, d, k, w, h, _run = read_header(buf)
    if fcode not in _DTYPES or (flags & _FLAG_PROBS and pcode not in _DTYPES):
        raise ValueError(f"unknown dtype codes {fcode}/{pcode}")
    layout = [
        ("features", _DTYPES[fcode], (n, d), True),
        ("boxes", np.dtype("<f4"), (n, 4), True),
        ("class_ids", np.dtype("<i4"), (n,), flags & _FLAG_CLASS_IDS),
        ("class_confidences", np.dtype("<f4"), (n,), flags & _FLAG_CONF),
        ("class_probs", _DTYPES.get(pcode), (n, k), flags & _FLAG_PROBS),
    ]
    out, off = {}, _HEADER.size
    for name, dtype, shape, present in layout:
        if present:
            count = int(np.prod(shape))
            out[name] = np.frombuffer(buf, dtype=dtype, count=count, offset=off).reshape(shape)
            off += _pad8(dtype.itemsize * count)
    return out, w, h


def _decode(image_id: str, data: bytearray) -> RegionRecord:
    a, w, h = _sections(data)
    cids = a.get("class_ids")
    return RegionRecord(image_id, a["features"], a["boxes"], w, h, None if cids is None else cids.astype(np.int64),
                        a.get("class_confidences"), a.get("class_probs"))  # fmt: skip


# ---------------------------------------------------------------------------------------------- environments

# One environment per path per process (LMDB forbids opening a path twice in one process). The pid is tracked so
# a forked DataLoader worker or DDP rank drops the handle it inherited and opens its own.
_READERS: dict[str, tuple[int, lmdb.Environment]] = {}


def _key_path(path: Path) -> str:
    return str(Path(path).resolve())


def _drop_reader(key: str) -> None:
    entry = _READERS.pop(key, None)
    if entry is not None:
        entry[1].close()


_LMDB_MAGIC = 0xBEEFC0DE
_PAGE_HEADER = 16  # pgno (8), pad (2), flags (2), lower (2), upper (2)


def check_lmdb_file(data_file: str | os.PathLike) -> None:
    """Refuse a `data.mdb` shorter than its own header says (mapping it would die of SIGBUS on the first read).

    The two meta pages at the start name the last page in use (`mm_last_pg`, the one with the higher txnid is
    current); the file must hold at least (last_pg + 1) pages. Layout: page header, then magic, version,
    address, mapsize, two 48-byte db records (the first one's pad field is the page size), last_pg, txnid.
    """
    data_file = Path(data_file)
    size = data_file.stat().st_size
    where = data_file.parent
    with open(data_file, "rb") as fh:
        head = fh.read(_PAGE_HEADER + 136)
        if len(head) < _PAGE_HEADER + 136:
            raise InputError(
                f"data.mdb is {size} bytes, too short for an LMDB environment (truncated?)", path=where
            )
        magic, _version = struct.unpack_from("<II", head, _PAGE_HEADER)
        psize = struct.unpack_from("<I", head, _PAGE_HEADER + 24)[0]
        if magic != _LMDB_MAGIC or psize < 512 or psize > 65536 or psize & (psize - 1):
            raise InputError("data.mdb is not an LMDB environment (bad header)", path=where)
        fh.seek(psize)
        second = fh.read(_PAGE_HEADER + 136)
    metas = [head]
    if len(second) == len(head):
        metas.append(second)
    best = None
    for m in metas:
        magic = struct.unpack_from("<I", m, _PAGE_HEADER)[0]
        last_pg, txnid = struct.unpack_from("<QQ", m, _PAGE_HEADER + 120)
        if magic == _LMDB_MAGIC and (best is None or txnid > best[1]):
            best = (last_pg, txnid)
    assert best is not None
    need = (best[0] + 1) * psize
    if size < max(need, 2 * psize):
        raise InputError(
            f"data.mdb is {size} bytes but its header says {max(need, 2 * psize)} (a truncated copy?); "
            "restore the store from a good copy or re-import it",
            path=where,
        )


def _reader_env(path: Path | str, resolved: bool = False) -> lmdb.Environment:
    key = str(path) if resolved else _key_path(Path(path))
    entry = _READERS.get(key)
    pid = os.getpid()
    if entry is not None and entry[0] == pid:
        return entry[1]
    if entry is not None:  # inherited through fork: closing the child's copy leaves the parent's env intact
        _drop_reader(key)
    if os.path.exists(os.path.join(key, "data.mdb")):
        check_lmdb_file(os.path.join(key, "data.mdb"))
    # A complete store is immutable, so no lock file is needed: no reader-slot limit across workers and ranks.
    # Readahead stays on: records are large (100 x 2048 fp16 = 400 KB, 100 pages) and contiguous, and without
    # it every page of a record not in the page cache is a separate 4 KB disk read (30x slower when cold).
    try:
        env = lmdb.open(
            key, readonly=True, lock=False, readahead=True, subdir=True, max_readers=2048, create=False
        )
    except lmdb.Error as exc:  # e.g. a writer on this path is open in this same process
        raise InputError(f"cannot open the feature store for reading ({exc})", path=key) from None
    _READERS[key] = (pid, env)
    return env


def _read_meta(txn: lmdb.Transaction) -> dict[str, Any] | None:
    raw = txn.get(META_KEY)
    return None if raw is None else json.loads(bytes(raw).decode("utf-8"))


def _new_stats() -> dict[str, Any]:
    return {
        "count": 0, "boxes_total": 0, "boxes_min": None, "boxes_max": None, "with_class_ids": 0,
        "with_confidences": 0, "with_class_probs": 0, "num_classes": None, "max_width": 0, "max_height": 0,
    }  # fmt: skip


class FeatureStoreWriter:
    """Writes (or resumes writing) a store. Records commit in batches; `m/complete` is set only on a clean exit.

    Re-opening an existing store continues it: `image_id in writer` says what is already there, and the
    store stays incomplete until this writer closes cleanly. Memory is bounded by one batch (<= 32 MiB).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        feature_dim: int | None = None,
        dtype: str = "float16",
        box_selection: BoxSelection | None = None,
        *,
        map_size: int = _INITIAL_MAP_SIZE,
    ) -> None:
        if dtype not in _DTYPE_CODES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPE_CODES)}, got {dtype!r}")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._closed = True
        self._lock = WriterLock(self.path, "feature store").acquire()
        try:
            self._open(feature_dim, dtype, box_selection, map_size)
        except BaseException:
            self._lock.release()
            raise
        self._closed = False

    def _open(
        self, feature_dim: int | None, dtype: str, box_selection: BoxSelection | None, map_size: int
    ) -> None:
        _drop_reader(_key_path(self.path))
        existing = (self.path / "data.mdb").exists() and (self.path / "data.mdb").stat().st_size > 0
        if existing:
            check_lmdb_file(self.path / "data.mdb")
        size = max(map_size, (self.path / "data.mdb").stat().st_size * 2 if existing else 0)
        self._env = lmdb.open(str(self.path), map_size=size, subdir=True, readahead=False, max_readers=2048)
        self._pending: list[tuple[bytes, bytes]] = []
        self._pending_bytes = 0
        self._pending_keys: set[bytes] = set()
        with self._env.begin() as txn:
            meta = _read_meta(txn)
        if meta is None:
            meta = {
                "format_version": FORMAT_VERSION, "feature_dim": feature_dim, "dtype": dtype,
                "box_selection": None if box_selection is None else box_selection.to_dict(), "runs": 0,
                "stats": _new_stats(), "checksums": "crc32",
            }  # fmt: skip
        else:
            if meta.get("format_version") != FORMAT_VERSION:
                self._env.close()
                raise InputError(f"store format {meta.get('format_version')} unsupported", path=self.path)
            for name, want, have in (
                ("feature_dim", feature_dim, meta["feature_dim"]),
                ("dtype", dtype, meta["dtype"]),
                (
                    "box_selection",
                    None if box_selection is None else box_selection.to_dict(),
                    meta["box_selection"],
                ),
            ):
                if name == "feature_dim" and (want is None or have is None):
                    continue
                if want != have:
                    self._env.close()
                    raise _err(
                        f"existing store has {name}={have!r}, this import asks for {want!r}; "
                        "use a new --out or the same settings",
                        self.path,
                        None,
                        name,
                        "width_mismatch" if name == "feature_dim" else "bad_value",
                    )
            if feature_dim is not None and meta["feature_dim"] is None:
                meta["feature_dim"] = feature_dim
        meta["runs"] = int(meta.get("runs", 0)) + 1
        self.meta = meta
        self.run = meta["runs"]
        self.dtype = meta["dtype"]
        self.box_selection = BoxSelection.from_dict(meta["box_selection"])
        # Any store being written reads as incomplete until this writer finishes.
        self._write_txn(lambda txn: (txn.delete(COMPLETE_KEY), txn.put(META_KEY, self._meta_bytes())))

    @property
    def feature_dim(self) -> int | None:
        return self.meta["feature_dim"]

    def _meta_bytes(self) -> bytes:
        return json.dumps(self.meta, sort_keys=True).encode("utf-8")

    def _write_txn(self, fn: Any) -> None:
        """Run `fn(txn)` in one write transaction, growing the map and retrying when it is full."""
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    fn(txn)
                return
            except lmdb.MapFullError:
                self._env.set_mapsize(self._env.info()["map_size"] * 2)

    def _stored_header(self, key: bytes) -> tuple | None:
        with self._env.begin(buffers=True) as txn:
            buf = txn.get(key)
            return None if buf is None else read_header(buf)

    def __contains__(self, image_id: str) -> bool:
        key = REC_PREFIX + str(image_id).encode("utf-8")
        if len(key) > len(REC_PREFIX) + MAX_ID_BYTES:
            return False  # cannot be stored (LMDB keys are at most 511 bytes)
        return key in self._pending_keys or self._stored_header(key) is not None

    def added_this_run(self, image_id: str) -> bool:
        """True when `image_id` was added by this writer (a duplicate), False when an earlier run added it."""
        key = REC_PREFIX + image_id.encode("utf-8")
        if key in self._pending_keys:
            return True
        header = self._stored_header(key)
        return header is not None and header[-1] == self.run

    def add(self, record: RegionRecord, *, path: Any = None, where: Any = None) -> None:
        """Validate, select boxes, encode and queue one record. Duplicate ids and a wrong width raise InputError."""
        image_id = validate_image_id(record.image_id, path=path, record=where)
        rec = where if where is not None else image_id
        check_record(record, path=path, where=rec)
        if image_id in self:
            raise _err(
                f"duplicate image id {image_id!r} (already in the store)",
                path,
                rec,
                "image_id",
                "duplicate_id",
            )
        d = record.feature_dim
        if self.meta["feature_dim"] is None:
            self.meta["feature_dim"] = d
        elif d != self.meta["feature_dim"]:
            raise _err(
                f"feature width {d} does not match the store's {self.meta['feature_dim']}",
                path, rec, "features", "width_mismatch",
            )  # fmt: skip
        if self.box_selection is not None:
            record = self.box_selection.apply(record)
        value = encode_record(record, self.dtype, self.run, image_id=image_id, path=path, where=rec)
        key = REC_PREFIX + image_id.encode("utf-8")
        self._pending.append((key, value))
        self._pending_keys.add(key)
        self._pending_bytes += len(value)
        self._update_stats(record)
        if len(self._pending) >= _BATCH_RECORDS or self._pending_bytes >= _BATCH_BYTES:
            self.flush()

    def _update_stats(self, r: RegionRecord) -> None:
        s = self.meta["stats"]
        n = r.num_boxes
        s["count"] += 1
        s["boxes_total"] += n
        s["boxes_min"] = n if s["boxes_min"] is None else min(s["boxes_min"], n)
        s["boxes_max"] = n if s["boxes_max"] is None else max(s["boxes_max"], n)
        s["with_class_ids"] += r.class_ids is not None
        s["with_confidences"] += r.class_confidences is not None
        if r.class_probs is not None:
            s["with_class_probs"] += 1
            s["num_classes"] = int(r.class_probs.shape[1])
        s["max_width"] = max(s["max_width"], int(r.image_width))
        s["max_height"] = max(s["max_height"], int(r.image_height))

    def flush(self) -> None:
        """Commit the queued records together with the running statistics (one atomic transaction)."""
        if not self._pending:
            return
        pending, meta = self._pending, self._meta_bytes()

        def put_all(txn: lmdb.Transaction) -> None:
            for key, value in pending:
                txn.put(key, value)
            txn.put(META_KEY, meta)

        self._write_txn(put_all)
        self._pending, self._pending_keys, self._pending_bytes = [], set(), 0

    def close(self, complete: bool = True) -> None:
        """Flush and, when `complete`, write the marker that makes the store readable."""
        if self._closed:
            return
        try:
            self.flush()
            if complete:
                self._write_txn(lambda txn: txn.put(COMPLETE_KEY, b"1"))
            self._env.sync(True)
            self._env.close()
        finally:
            self._closed = True
            self._lock.release()

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # On an error keep what was committed (so a re-run resumes) but never mark the store complete.
        self.close(complete=exc_type is None)


class FeatureStore:
    """Read-only access: `store[image_id]` in O(1), `iter(store)` streams in id order.

    The LMDB handle opens lazily and per process, so the object can be created in the parent, then used in
    forked or spawned DataLoader workers and DDP ranks. `box_selection` applies a selection at read time.
    """

    def __init__(self, path: str | os.PathLike, box_selection: BoxSelection | None = None) -> None:
        self.path = Path(path)
        self._key = _key_path(self.path)
        self.box_selection = box_selection
        if not (self.path / "data.mdb").is_file():
            raise InputError("no feature store here (missing data.mdb); create one with `imagebert features import`",
                             path=self.path)  # fmt: skip
        with _reader_env(self.path).begin() as txn:
            meta = _read_meta(txn)
            complete = txn.get(COMPLETE_KEY) is not None
        if meta is None or not complete:
            raise InputError(
                "feature store is incomplete (an import was interrupted or is still running); "
                "re-run the same `imagebert features import` (or `extract`) command with --resume to finish it",
                path=self.path,
            )
        self.meta = meta
        self.feature_dim: int = int(meta["feature_dim"] or 0)  # 0 only for an empty store
        self.dtype: str = meta["dtype"]
        self._len = int(meta["stats"]["count"])
        self.has_checksums = meta.get("checksums") == "crc32"

    @property
    def stats(self) -> dict[str, Any]:
        return dict(self.meta["stats"])

    def _env(self) -> lmdb.Environment:
        entry = _READERS.get(self._key)  # fast path: no path resolution per read
        if entry is not None and entry[0] == os.getpid():
            return entry[1]
        return _reader_env(self._key, resolved=True)

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)  # holds no handle: workers reopen through _reader_env

    def get(self, image_id: str) -> RegionRecord | None:
        with self._env().begin(buffers=True) as txn:
            buf = txn.get(REC_PREFIX + str(image_id).encode("utf-8"))
            if buf is None:
                return None
            record = decode_record(str(image_id), buf, path=self.path, require_checksum=self.has_checksums)
        return record if self.box_selection is None else self.box_selection.apply(record)

    def num_boxes(self, image_id: str) -> int:
        """How many boxes `store[image_id]` returns (after the box selection), from the record's header alone.

        Length bucketing needs one count per image: decoding each record (a copy and a CRC over 400 KB at 100 x
        2048 fp16) would read the whole store at start-up; the header is one page. A `min_confidence`
        selection also reads the confidence column, still in place. Unverified: the training read that follows
        checks the record's checksum."""
        key = REC_PREFIX + str(image_id).encode("utf-8")
        with self._env().begin(buffers=True) as txn:
            buf = txn.get(key)
            if buf is None:
                raise KeyError(f"image id {image_id!r} not in feature store {self.path}")
            try:
                n = read_header(buf)[3]
                if self.box_selection is None:
                    return n
                # views into the mapped record: only the pages of the columns read are touched
                return self.box_selection.count(n, _sections(buf)[0].get("class_confidences"))
            except (ValueError, struct.error) as exc:
                raise CorruptRecordError(
                    f"unreadable record header ({exc})", path=self.path, record=str(image_id), field="record"
                ) from None

    def __getitem__(self, image_id: str) -> RegionRecord:
        record = self.get(image_id)
        if record is None:
            raise KeyError(f"image id {image_id!r} not in feature store {self.path}")
        return record

    def __contains__(self, image_id: object) -> bool:
        if not isinstance(image_id, str):
            return False
        with self._env().begin(buffers=True) as txn:
            return txn.get(REC_PREFIX + image_id.encode("utf-8")) is not None

    def __len__(self) -> int:
        return self._len

    def ids(self) -> list[str]:
        """All image ids in key (byte) order."""
        out: list[str] = []
        with self._env().begin() as txn:
            cur = txn.cursor()
            if cur.set_range(REC_PREFIX):
                for key in cur.iternext(keys=True, values=False):
                    if not key.startswith(REC_PREFIX):
                        break
                    out.append(key[len(REC_PREFIX) :].decode("utf-8"))
        return out

    def __iter__(self) -> Iterator[RegionRecord]:
        """Stream every record in id order; memory stays at one record."""
        with self._env().begin(buffers=True) as txn:
            cur = txn.cursor()
            if not cur.set_range(REC_PREFIX):
                return
            for key, value in cur:
                key = bytes(key)
                if not key.startswith(REC_PREFIX):
                    break
                record = decode_record(
                    key[len(REC_PREFIX) :].decode("utf-8", errors="replace"), value, path=self.path,
                    require_checksum=self.has_checksums,
                )  # fmt: skip
                yield record if self.box_selection is None else self.box_selection.apply(record)

    def close(self) -> None:
        _drop_reader(_key_path(self.path))

    def info(self) -> dict[str, Any]:
        """What `imagebert features info` prints."""
        s = self.meta["stats"]
        count = s["count"]
        return {
            "path": str(self.path),
            "images": count,
            "feature_dim": self.feature_dim,
            "dtype": self.dtype,
            "box_selection_at_import": self.meta["box_selection"],
            "boxes_total": s["boxes_total"],
            "boxes_per_image": {
                "min": s["boxes_min"],
                "mean": round(s["boxes_total"] / count, 2) if count else None,
                "max": s["boxes_max"],
            },
            "class_ids": f"{s['with_class_ids']}/{count} images",
            "class_confidences": f"{s['with_confidences']}/{count} images",
            "class_distributions": f"{s['with_class_probs']}/{count} images"
            + (f" ({s['num_classes']} classes)" if s["num_classes"] else ""),
            "max_image_size": [s["max_width"], s["max_height"]],
            "size_mib": round(os.path.getsize(self.path / "data.mdb") / 2**20, 2),
            "import_runs": self.meta["runs"],
            "checksums": self.meta.get("checksums") or "none (written before per-record checksums)",
        }


def verify_store(path: str | os.PathLike, *, max_listed: int = 20) -> dict[str, Any]:
    """Read every record of the store at `path` and check its checksum and layout (`imagebert features verify`).

    Works on incomplete stores too (reported). Returns counts plus up to `max_listed` damaged ids; `ok` is False
    when any record is damaged, the LMDB environment is unreadable, or the record count disagrees with the meta.
    """
    path = Path(path)
    if not (path / "data.mdb").is_file():
        raise InputError("no feature store here (missing data.mdb)", path=path)
    check_lmdb_file(path / "data.mdb")
    env = _reader_env(path)
    out: dict[str, Any] = {"path": str(path), "records": 0, "verified": 0, "without_checksum": 0, "damaged": 0,
                           "damaged_ids": [], "complete": False, "meta_count": None, "problems": []}  # fmt: skip
    meta = None
    try:
        with env.begin(buffers=True) as txn:
            meta = _read_meta(txn)
            out["complete"] = txn.get(COMPLETE_KEY) is not None
            required = meta is not None and meta.get("checksums") == "crc32"
            out["store_checksums"] = "crc32" if required else None
            out["meta_count"] = None if meta is None else int(meta["stats"]["count"])
            cur = txn.cursor()
            if cur.set_range(REC_PREFIX):
                for key, value in cur:
                    key = bytes(key)
                    if not key.startswith(REC_PREFIX):
                        break
                    out["records"] += 1
                    iid = key[len(REC_PREFIX) :].decode("utf-8", errors="replace")
                    state = record_checksum_state(iid, value)
                    if state is None and not required:
                        out["without_checksum"] += 1
                        try:
                            _decode(iid, bytearray(value))
                        except (ValueError, struct.error):
                            state = False
                        else:
                            continue
                    if state:
                        out["verified"] += 1
                        continue
                    out["damaged"] += 1
                    if len(out["damaged_ids"]) < max_listed:
                        out["damaged_ids"].append(iid)
    except lmdb.Error as exc:
        out["problems"].append(f"LMDB error while reading ({exc})")
    if meta is None:
        out["problems"].append("no meta record")
    elif out["meta_count"] != out["records"] and not out["problems"]:
        out["problems"].append(f"meta says {out['meta_count']} records, found {out['records']}")
    if not out["complete"]:
        out["problems"].append("incomplete (an import was interrupted or is running)")
    out["ok"] = not out["damaged"] and not out["problems"]
    return out


__all__ = [
    "BoxSelection",
    "FeatureStore",
    "FeatureStoreWriter",
    "CorruptRecordError",
    "check_lmdb_file",
    "check_record",
    "decode_record",
    "encode_record",
    "validate_image_id",
    "verify_store",
]
