"""Work planning: index each WARC once, then cut the work into record-range tasks that fit any cluster.

A WARC is indexed in one pass (offsets of pages and image responses, like a CDX index) into
`work/index/<file>.json`; tasks are then ranges of page offsets (`run.pages_per_task` pages), so one large file
spreads over every worker, and small files are packed together so a task is never a handful of pages (Dask's
per-task overhead would dominate). A task's name covers its inputs (path, size, mtime, page range) and the
config fingerprint, so a re-run with another config never reuses shards made under the old one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Any

from imagebert.lait.config import LaitConfig
from imagebert.lait.sources import Shard, ShardReadError, WarcIndex, decompress_whole_gzip, index_warc
from imagebert.runtime.atomic import atomic_write_text

# Config sections that do not change what a task writes (aggregation runs after the tasks; the rest is
# scheduling or reporting).
_NOT_IN_FINGERPRINT = {
    "aggregation": None,
    "run": ("workers", "retries", "warn_drop_share", "warn_min_in", "strict_input"),
}


def _file_digest(path: str | Path | None) -> str:
    if not path:
        return ""
    p = Path(path)
    if not p.is_file():
        return str(path)
    h = hashlib.sha1()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def config_fingerprint(cfg: LaitConfig) -> str:
    """Hash of everything that changes a task's output: the config (less scheduling keys), the weight files
    it uses (trained or shipped), and the package version."""
    import imagebert
    from imagebert.lait.photoclf import SHIPPED as PHOTO_WEIGHTS
    from imagebert.lait.scoring import SHIPPED_SCORER

    data = cfg.to_dict()
    for section, keys in _NOT_IN_FINGERPRINT.items():
        if keys is None:
            data.pop(section, None)
        else:
            for k in keys:
                data[section].pop(k, None)
    files = {
        "photo_model": _file_digest(cfg.images.photo_model or PHOTO_WEIGHTS)
        if cfg.images.type_classifier == "learned"
        else "",
        "scorer": _file_digest(cfg.scoring.model or SHIPPED_SCORER)
        if cfg.scoring.model is None or Path(cfg.scoring.model).is_file()
        else cfg.scoring.model,
    }
    blob = json.dumps(
        {"config": data, "files": files, "version": getattr(imagebert, "__version__", "")}, sort_keys=True
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _stat_key(path: str) -> str:
    st = os.stat(path)
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def index_file_for(work_dir: str | Path, warc: str) -> Path:
    digest = hashlib.sha1(_stat_key(warc).encode()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(warc).name)[:60]
    return Path(work_dir) / "index" / f"{stem}-{digest}.json"


def build_index(warc: str, work_dir: str) -> dict[str, Any]:
    """Index one WARC into work/index (once: an existing index of the same path, size and mtime is reused).
    A whole-file-gzip WARC is inflated next to its index so its records can be read by offset."""
    out = index_file_for(work_dir, warc)
    if out.is_file():
        return {"file": warc, "index": str(out), "status": "cached"}
    out.parent.mkdir(parents=True, exist_ok=True)
    idx = index_warc(warc)
    if idx.whole_gzip:
        plain = decompress_whole_gzip(warc, out.with_suffix(".warc"))
        idx = index_warc(warc, str(plain))
        idx.errors.insert(
            0, ShardReadError("note_whole_file_gzip", f"{Path(warc).name}: inflated to {plain.name}")
        )
    data = asdict(idx)
    atomic_write_text(out, json.dumps(data), fsync=False)
    return {"file": warc, "index": str(out), "status": "built"}


@lru_cache(maxsize=8)
def load_index(path: str) -> WarcIndex:
    """Read once per worker process (tasks of the same file share it)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    errors = [ShardReadError(**e) for e in data.pop("errors")]
    return WarcIndex(**data, errors=errors)


def plan_tasks(
    warcs: list[str], html_shards: list[Shard], work_dir: str | Path, cfg: LaitConfig, fingerprint: str
) -> list[Shard]:
    """Record-range tasks over the indexed WARCs (packed up to run.pages_per_task pages) + the HTML groups."""
    per = cfg.run.pages_per_task
    tasks: list[Shard] = []
    current: list[tuple[str, int, int]] = []
    size = 0

    def flush() -> None:
        nonlocal current, size
        if current:
            key = "|".join(f"{_stat_key(p)}|{a}-{b}" for p, a, b in current) + f"|{fingerprint}"
            digest = hashlib.sha1(key.encode()).hexdigest()[:12]
            p0, a0, _ = current[0]
            stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(p0).name)[:50]
            name = f"{stem}-r{a0}-{digest}"
            tasks.append(Shard(name, "warc", tuple(p for p, _, _ in current), "", tuple(current)))
        current, size = [], 0

    for warc in warcs:
        idx = load_index(str(index_file_for(work_dir, warc)))
        n = len(idx.pages)
        starts = list(range(0, n, per)) or [0]  # a file without pages still reports its read errors
        for a in starts:
            b = min(n, a + per)
            if size and size + (b - a) > per:
                flush()
            current.append((warc, a, b))
            size += max(1, b - a)
            if size >= per:
                flush()
    flush()
    for s in html_shards:
        digest = hashlib.sha1(f"{s.name}|{fingerprint}".encode()).hexdigest()[:12]
        tasks.append(Shard(f"{s.name}-{digest}", s.kind, s.paths, s.root))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError("two inputs map to the same task name; pass each file once")
    return sorted(tasks, key=lambda t: t.name)
