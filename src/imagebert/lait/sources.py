"""Inputs: WARC files (Common Crawl layout, one gzip member per record) and folders of saved HTML pages.

A shard is one input file (or a fixed-size group of HTML files), so shards can run anywhere and be re-run alone.
Records are read by offset, never all into memory: a 1 GB WARC is indexed in one pass and read page by page.
"""

from __future__ import annotations

import codecs
import hashlib
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from warcio.archiveiterator import ArchiveIterator

HTML_TYPES = ("text/html", "application/xhtml+xml")
WARC_SUFFIXES = (".warc", ".warc.gz", ".arc.gz")
HTML_SUFFIXES = (".html", ".htm", ".xhtml")


@dataclass(frozen=True)
class Shard:
    """One unit of work: `kind` is "warc" (page ranges of one or more WARC files) or "html" (a group of files
    under `root`). `segments` = (warc path, first page, end page) into each file's index."""

    name: str
    kind: str
    paths: tuple[str, ...]
    root: str = ""
    segments: tuple[tuple[str, int, int], ...] = ()


@dataclass
class RawPage:
    url: str
    body: bytes
    charset: str | None = None
    truncated: bool = False
    local_dir: str | None = None  # for HTML folders: where relative file:// images live


@dataclass
class ShardReadError:
    reason: str
    detail: str


@dataclass
class WarcIndex:
    """Offsets of HTML pages and image responses in one WARC file."""

    path: str
    pages: list[int] = field(default_factory=list)
    images: dict[str, int] = field(default_factory=dict)
    errors: list[ShardReadError] = field(default_factory=list)
    skipped_bytes: int = 0
    skipped_regions: int = 0
    read_path: str = ""
    whole_gzip: bool = False


def _shard_name(path: Path, extra: str = "") -> str:
    """Stable across re-runs of the same inputs; changes when a file's size or a group's membership changes."""
    size = path.stat().st_size if path.is_file() else 0
    digest = hashlib.sha1(f"{path.resolve()}|{size}|{extra}".encode()).hexdigest()[:10]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.name)[:60]
    return f"{stem}-{digest}"


def discover_inputs(
    inputs: list[str | Path], html_files_per_shard: int = 200
) -> tuple[list[str], list[Shard]]:
    """(WARC files, HTML shards), every path made absolute here, in the client, so a worker with another working
    directory (a Dask cluster) finds the same files."""
    warcs: list[str] = []
    shards: list[Shard] = []
    for item in inputs:
        p = Path(item).expanduser().resolve()
        if p.is_file():
            if p.name.endswith(HTML_SUFFIXES):
                shards.append(Shard(_shard_name(p), "html", (str(p),), str(p.parent)))
            else:
                warcs.append(str(p))
        elif p.is_dir():
            warcs += [str(f) for f in sorted(p.rglob("*")) if f.is_file() and f.name.endswith(WARC_SUFFIXES)]
            htmls = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(HTML_SUFFIXES))
            for i in range(0, len(htmls), html_files_per_shard):
                group = htmls[i : i + html_files_per_shard]
                shards.append(
                    Shard(
                        _shard_name(p, f"#{i}|" + "|".join(f"{f.name}:{f.stat().st_size}" for f in group)),
                        "html",
                        tuple(str(f) for f in group),
                        str(p),
                    )
                )
        else:
            raise FileNotFoundError(f"LAIT input not found: {item} (resolved to {p})")
    if len(set(warcs)) != len(warcs):
        raise ValueError("a WARC file is given twice; pass each file once")
    return warcs, shards


def _content_type(rec) -> str:
    """The HTTP Content-Type, else Common Crawl's sniffed WARC-Identified-Payload-Type."""
    ct = rec.http_headers.get_header("Content-Type") if rec.http_headers else None
    return (ct or rec.rec_headers.get_header("WARC-Identified-Payload-Type") or "").lower()


def charset_of(content_type: str) -> str | None:
    m = re.search(r"charset\s*=\s*[\"']?([A-Za-z0-9_.:-]+)", content_type)
    return m.group(1) if m else None


_GZIP_MAGIC = b"\x1f\x8b\x08"
_WARC_MAGIC = b"WARC/"
_SCAN_BLOCK = 1 << 20


def _looks_like_record(fh, pos: int, gz: bool) -> bool:
    """Does a WARC record start at `pos`? (gzip: the member inflates to "WARC/"; plain: the bytes are "WARC/")."""
    fh.seek(pos)
    head = fh.read(4096)
    if not gz:
        return head.startswith(_WARC_MAGIC)
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 16).startswith(_WARC_MAGIC)
    except zlib.error:
        return False


def _next_record_start(fh, pos: int, gz: bool) -> int | None:
    """The first offset >= pos where a readable record starts (scan for the gzip or WARC magic), else None."""
    magic = _GZIP_MAGIC if gz else _WARC_MAGIC
    while True:
        fh.seek(pos)
        block = fh.read(_SCAN_BLOCK + len(magic))
        if len(block) < len(magic):
            return None
        i = block.find(magic)
        while i != -1 and i < _SCAN_BLOCK:
            if _looks_like_record(fh, pos + i, gz):
                return pos + i
            i = block.find(magic, i + 1)
        if len(block) <= _SCAN_BLOCK:
            return None
        pos += _SCAN_BLOCK


def decompress_whole_gzip(path: str, dest: Path) -> Path:
    """Inflate a whole-file-gzip WARC to a plain WARC (readable by offset); the copy lives in the work folder."""
    import gzip
    import shutil

    dest.parent.mkdir(parents=True, exist_ok=True)
    from imagebert.runtime.atomic import atomic_open

    with gzip.open(path, "rb") as src, atomic_open(dest, "wb", fsync=False) as out:
        shutil.copyfileobj(src, out, 1 << 20)
    return dest


def index_warc(path: str, read_path: str | None = None) -> WarcIndex:
    """One pass over the file: where each HTML page and each image response starts. Never raises on bad input.

    Unreadable bytes (garbage between records, a corrupt member) do not end the pass: the reader resynchronises
    at the next offset where a record starts and counts what it skipped (`skipped_bytes`, `skipped_regions`).
    `read_path` is the file actually read (a plain copy of a whole-file-gzip WARC); `path` names it in reports.
    """
    idx = WarcIndex(path)
    src = read_path or path
    idx.read_path = src
    size = Path(src).stat().st_size
    with open(src, "rb") as f:
        gz = f.read(3) == _GZIP_MAGIC
        pos = 0
        while pos is not None and pos < size:
            f.seek(pos)
            good_end = pos
            try:
                it = ArchiveIterator(f)
                for rec in it:
                    off = it.get_record_offset()
                    good_end = off + it.get_record_length()
                    if rec.rec_type != "response" or rec.http_headers is None:
                        continue
                    ct = _content_type(rec)
                    url = rec.rec_headers.get_header("WARC-Target-URI") or ""
                    status = rec.http_headers.get_statuscode() or ""
                    if not status.startswith("2"):
                        if ct.startswith(HTML_TYPES):
                            idx.errors.append(ShardReadError("http_status", f"{status} {url}"[:200]))
                        continue
                    if ct.startswith(HTML_TYPES):
                        idx.pages.append(off)
                    elif ct.startswith("image/") and url:
                        idx.images.setdefault(url, off)
                pos = None  # clean end of file
            except Exception as exc:  # noqa: BLE001 - any unreadable byte sequence is counted, then skipped
                if "non-chunked gzip" in str(exc):
                    idx.whole_gzip = True  # the caller inflates the file once and indexes the plain copy
                    idx.pages, idx.images = [], {}
                    return idx
                good_end = max(good_end, pos)
                nxt = _next_record_start(f, good_end + 1, gz)
                end = size if nxt is None else nxt
                idx.skipped_bytes += end - good_end
                idx.skipped_regions += 1
                idx.errors.append(
                    ShardReadError(
                        "warc_unreadable",
                        f"{Path(path).name} @ {good_end}: {end - good_end} bytes skipped "
                        f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"[
                            :240
                        ],
                    )
                )
                pos = nxt
    return idx


def read_record_at(f, offset: int, max_bytes: int) -> tuple[str, bytes, str, bool]:
    """(url, payload, content type, truncated) of the record at `offset`; payload capped at max_bytes + 1."""
    f.seek(offset)
    rec = next(iter(ArchiveIterator(f)))
    url = rec.rec_headers.get_header("WARC-Target-URI") or ""
    body = rec.content_stream().read(max_bytes + 1)
    truncated = len(body) <= max_bytes and getattr(rec.raw_stream, "limit", 0) > 0
    return url, body, _content_type(rec), truncated


def iter_html_files(shard: Shard) -> Iterator[RawPage]:
    root = Path(shard.root)
    for p in shard.paths:
        path = Path(p)
        rel = path.resolve().relative_to(root.resolve()) if root else Path(path.name)
        yield RawPage(url=f"file:///{rel.as_posix()}", body=path.read_bytes(), local_dir=str(root))


def local_file_for(url: str, root: str) -> Path | None:
    """file:///rel/path under `root`, refusing paths that escape it."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        return None
    base = Path(root).resolve()
    target = (base / unquote(parts.path).lstrip("/")).resolve()
    if base not in target.parents and target != base:
        return None
    return target


def mirror_file_for(url: str, mirror_dir: str) -> Path | None:
    """A local mirror laid out as <mirror>/<host>/<path> (the layout `wget -x` writes)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    base = Path(mirror_dir).resolve()
    target = (base / parts.hostname / unquote(parts.path).lstrip("/")).resolve()
    if base not in target.parents:
        return None
    return target


_META_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:-]+)", re.I)


def _valid_codec(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def decode_html(body: bytes, declared: str | None = None) -> tuple[str, str]:
    """Bytes -> (text, codec used). Valid UTF-8 wins (declarations are often wrong), then the declared charsets,
    then cp1252; never raises."""
    if body.startswith(codecs.BOM_UTF8):
        return body[3:].decode("utf-8", errors="replace"), "utf-8-sig"
    for bom, enc in ((codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
        if body.startswith(bom):
            return body[2:].decode(enc, errors="replace"), enc
    try:
        return body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    m = _META_CHARSET.search(body[:4096])
    for name in (declared, m.group(1).decode("ascii", "ignore") if m else None, "cp1252"):
        codec = _valid_codec(name)
        if codec and codec not in ("utf-8",):
            try:
                return body.decode(codec), codec
            except (UnicodeDecodeError, LookupError):
                continue
    return body.decode("latin-1"), "latin-1"
