"""Run steps 1-4 over one shard and commit its output atomically (temp folder, then one rename).

A finished shard is a folder `shards/<name>/` with pairs.jsonl, funnel.json and images/; its existence is the
"done" marker, so a re-run skips it and a crash mid-shard leaves only a temp folder that the next run deletes.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagebert.lait.config import LaitConfig
from imagebert.lait.fetch import HttpFetcher
from imagebert.lait.funnel import Funnel
from imagebert.lait.images import (
    CheckedImage,
    ImageReject,
    decode_image,
    heuristic_racy,
    heuristic_type,
    load_classifier,
)
from imagebert.lait.pages import PageReject, PageResult, process_page
from imagebert.lait.scoring import Scorer, text_image_features
from imagebert.lait.sources import (
    RawPage,
    Shard,
    charset_of,
    decode_html,
    iter_html_files,
    local_file_for,
    mirror_file_for,
    read_record_at,
)
from imagebert.lait.text import TextCleaner

CHUNK = 64
IMAGE_CACHE_SIZE = (
    4 * CHUNK
)  # per shard: the same image on nearby pages is decoded once; memory stays bounded


class _LruCache(OrderedDict):
    """url -> checked image or reject; touching an entry (membership test or read) makes it recent."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __contains__(self, key) -> bool:
        found = super().__contains__(key)
        if found:
            self.move_to_end(key)
        return found

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


@dataclass
class _Ctx:
    cfg: LaitConfig
    funnel: Funnel
    cleaner: TextCleaner
    scorer: Any
    racy: Any
    kind: Any
    fetcher: HttpFetcher | None
    images_dir: Path
    pairs: list[dict]
    image_cache: _LruCache
    neural: Any = None
    min_score: float = 0.5
    skipped: list = field(default_factory=list)  # bytes skipped while resynchronising, per file


def load_scorer(cfg: LaitConfig) -> Any:
    """The default weights, a trained scorer file, or a user's scorer from "package.module:factory"."""
    spec = cfg.scoring.model
    if not spec:
        return Scorer.shipped(neural=cfg.scoring.neural)
    if spec == "hand":
        return Scorer.default(neural=cfg.scoring.neural)
    if ":" in spec and not Path(spec).exists():
        mod, attr = spec.split(":", 1)
        return getattr(importlib.import_module(mod), attr)(cfg)
    return Scorer.load(spec)


def _make_ctx(cfg: LaitConfig, images_dir: Path) -> _Ctx:
    scorer = load_scorer(cfg)
    neural = None
    if cfg.scoring.neural or getattr(scorer, "neural", False):
        from imagebert.lait.neural import get_neural_features

        neural = get_neural_features(cfg.scoring.device)
    return _Ctx(
        cfg=cfg,
        funnel=Funnel(cfg.run.examples_per_reason),
        cleaner=TextCleaner(cfg.text),
        scorer=scorer,
        racy=load_classifier(cfg.images.racy_classifier, cfg.images, heuristic_racy),
        kind=load_classifier(cfg.images.type_classifier, cfg.images, heuristic_type),
        fetcher=HttpFetcher(cfg.fetch) if cfg.fetch.enabled else None,
        images_dir=images_dir,
        pairs=[],
        image_cache=_LruCache(IMAGE_CACHE_SIZE),
        neural=neural,
        # scoring.min_score overrides; otherwise the threshold the scorer was trained to (stored in its file)
        min_score=cfg.scoring.min_score
        if cfg.scoring.min_score is not None
        else float(getattr(scorer, "threshold", 0.5)),
    )


def _page_step(ctx: _Ctx, page: RawPage) -> PageResult | None:
    f = ctx.funnel
    if page.truncated:
        f.drop("pages", "truncated_record", {"url": page.url})
        return None
    if len(page.body) > ctx.cfg.pages.max_html_bytes:
        f.drop("pages", "html_too_large", {"url": page.url, "bytes": len(page.body)})
        return None
    try:
        html, _codec = decode_html(page.body, page.charset)
        result = process_page(page.url, html, ctx.cfg.pages)
    except PageReject as rej:
        f.drop("pages", rej.reason, {"url": page.url, "detail": rej.detail})
        return None
    except Exception as exc:  # noqa: BLE001 - a page that breaks the parser is a reject, not a crash
        f.drop("pages", "page_error", {"url": page.url, "detail": f"{type(exc).__name__}: {exc}"[:160]})
        return None
    f.kept("pages")
    return result


def _resolve_bytes(ctx: _Ctx, urls: list[str], warc_lookup, local_root: str | None) -> dict[str, Any]:
    """url -> bytes, or ("reason", detail). Order: same WARC, local folder, mirror, HTTP."""
    out: dict[str, Any] = {}
    to_fetch = []
    for url in dict.fromkeys(urls):
        if url in ctx.image_cache:
            continue
        got = warc_lookup(url) if warc_lookup else None
        if got is not None:
            out[url] = got
            continue
        for path in (
            local_file_for(url, local_root) if local_root else None,
            mirror_file_for(url, ctx.cfg.images.mirror_dir) if ctx.cfg.images.mirror_dir else None,
        ):
            if path is not None and path.is_file():
                if path.stat().st_size > ctx.cfg.images.max_bytes:
                    out[url] = ("too_many_bytes", f"{path.stat().st_size} bytes")
                else:
                    out[url] = path.read_bytes()
                break
        else:
            if ctx.fetcher is not None and url.startswith(("http://", "https://")):
                to_fetch.append(url)
            else:
                out[url] = ("image_not_found", url[:160])
    if to_fetch and ctx.fetcher is not None:
        for url, res in ctx.fetcher.fetch_many(to_fetch).items():
            out[url] = res.data if res.data is not None else (res.error or "fetch_error", url[:160])
    return out


def _check_image(ctx: _Ctx, url: str, data: Any) -> CheckedImage | tuple[str, str]:
    if isinstance(data, tuple):
        return data
    try:
        img = decode_image(data, ctx.cfg.images)
    except ImageReject as rej:
        return rej.reason, rej.detail
    try:
        label, conf = ctx.racy(img.thumb)
        if label != "normal":
            return "racy", f"{label} {conf:.2f}"
    except Exception as exc:  # noqa: BLE001 - a user classifier failing on one image rejects that image
        return "classifier_error", f"{type(exc).__name__}: {exc}"[:160]
    return img


def _classify_type(ctx: _Ctx, checked: dict[str, Any]) -> None:
    """The image-type classifier over every decoded image of a chunk, batched when it supports it."""
    urls = [u for u, r in checked.items() if isinstance(r, CheckedImage)]
    if not urls:
        return
    batch = getattr(ctx.kind, "batch", None)
    try:
        if batch is None:
            raise TypeError
        labels = batch([checked[u].thumb for u in urls])
    except Exception:  # noqa: BLE001 - per image, so one bad image rejects only itself
        labels = []
        for u in urls:
            try:
                labels.append(ctx.kind(checked[u].thumb))
            except Exception as exc:  # noqa: BLE001
                labels.append(("classifier_error", f"{type(exc).__name__}: {exc}"[:160]))
    for u, (label, conf) in zip(urls, labels, strict=True):
        if label == "classifier_error":
            checked[u] = (label, conf)
        elif label != "normal":
            checked[u] = (label, f"{conf:.2f}")


def _process_chunk(ctx: _Ctx, pages: list[PageResult], warc_lookup, local_root: str | None) -> None:
    f = ctx.funnel
    fresh = _resolve_bytes(ctx, [p.image_url for p in pages], warc_lookup, local_root)
    checked = {url: _check_image(ctx, url, data) for url, data in fresh.items()}
    _classify_type(ctx, checked)
    for url, res in checked.items():
        ctx.image_cache[url] = res
    for page in pages:
        img = ctx.image_cache[page.image_url]
        example = {"url": page.url, "image": page.image_url}
        if isinstance(img, tuple):
            f.drop("images", img[0], {**example, "detail": img[1]})
            continue
        f.kept("images")
        clean = []
        for source, raw in page.candidates:
            res = ctx.cleaner.check(source, raw)
            if isinstance(res, str):
                f.drop("text_candidates", res, {"url": page.url, "source": source, "text": raw[:200]})
            else:
                f.kept("text_candidates")
                clean.append(res)
        if not clean:
            f.drop("text", "no_clean_text", {**example, "candidates": len(page.candidates)})
            continue
        f.kept("text")
        labels = ctx.neural.labels(img.thumb, ctx.cfg.scoring.top_labels) if ctx.neural is not None else None
        best = None
        for c in clean:
            feats = text_image_features(c.text, c.source, c.n_words, c.oov_ratio, img.width, img.height)
            if labels is not None:
                feats.update(ctx.neural.cross_features(c.text, labels))
            s = float(ctx.scorer.score(feats, text=c.text, image=img.thumb))
            if best is None or s > best[0]:
                best = (s, c)
        score, cand = best
        if score < ctx.min_score:
            f.drop("scoring", "low_score", {**example, "text": cand.text, "score": round(score, 4)})
            continue
        f.kept("scoring")
        path = ctx.images_dir / f"{img.image_id}.jpg"
        if not path.exists():
            path.write_bytes(img.jpeg)
        ctx.pairs.append(
            {
                "image_id": img.image_id,
                "dhash": f"{img.dhash:016x}",
                "caption": cand.text,
                "score": round(score, 6),
                "source": cand.source,
                "url": page.image_url,
                "page_url": page.url,
                "width": img.width,
                "height": img.height,
            }
        )


def _run_warc_segment(ctx: _Ctx, warc: str, first: int, end: int, index_path: str) -> None:
    from imagebert.lait.plan import load_index

    f = ctx.funnel
    idx = load_index(index_path)
    if first == 0:  # file-level read errors are counted once, by the task holding the file's first range
        for err in idx.errors:
            if not err.reason.startswith("note_"):
                f.drop("pages", err.reason, {"file": Path(warc).name, "detail": err.detail})
        if idx.skipped_bytes:
            ctx.skipped.append({"file": warc, "bytes": idx.skipped_bytes, "regions": idx.skipped_regions})
    with open(idx.read_path or warc, "rb") as fh:

        def warc_lookup(url: str):
            off = idx.images.get(url)
            if off is None:
                return None
            try:
                _u, body, _ct, truncated = read_record_at(fh, off, ctx.cfg.images.max_bytes)
            except Exception as exc:  # noqa: BLE001
                return ("truncated_record", f"{type(exc).__name__}")
            if len(body) > ctx.cfg.images.max_bytes:
                return ("too_many_bytes", f">{ctx.cfg.images.max_bytes} bytes")
            return ("truncated_record", url[:160]) if truncated else body

        batch: list[PageResult] = []
        for off in idx.pages[first:end]:
            try:
                url, body, ct, truncated = read_record_at(fh, off, ctx.cfg.pages.max_html_bytes)
            except Exception as exc:  # noqa: BLE001
                f.drop(
                    "pages",
                    "truncated_record",
                    {"file": Path(warc).name, "offset": off, "detail": type(exc).__name__},
                )
                continue
            res = _page_step(ctx, RawPage(url, body, charset_of(ct), truncated))
            if res is not None:
                batch.append(res)
            if len(batch) >= CHUNK:
                _process_chunk(ctx, batch, warc_lookup, None)
                batch = []
        if batch:
            _process_chunk(ctx, batch, warc_lookup, None)


def _run_pages(ctx: _Ctx, shard: Shard, work_dir: str | Path) -> None:
    if shard.kind == "warc":
        from imagebert.lait.plan import index_file_for

        for warc, first, end in shard.segments:
            _run_warc_segment(ctx, warc, first, end, str(index_file_for(work_dir, warc)))
    else:
        batch = []
        for page in iter_html_files(shard):
            res = _page_step(ctx, page)
            if res is not None:
                batch.append(res)
            if len(batch) >= CHUNK:
                _process_chunk(ctx, batch, None, shard.root)
                batch = []
        if batch:
            _process_chunk(ctx, batch, None, shard.root)


def shard_dir(work_dir: str | Path, shard: Shard) -> Path:
    return Path(work_dir) / "shards" / shard.name


def process_shard(
    shard: Shard, cfg: LaitConfig, work_dir: str | Path, fingerprint: str = ""
) -> dict[str, Any]:
    """Steps 1-4 for one shard; idempotent: an existing committed shard folder is left alone."""
    final = shard_dir(work_dir, shard)
    if final.is_dir():
        return {"shard": shard.name, "status": "skipped"}
    tmp = final.parent / f".tmp-{shard.name}-{uuid.uuid4().hex[:8]}"
    (tmp / "images").mkdir(parents=True)
    try:
        ctx = _make_ctx(cfg, tmp / "images")
        _run_pages(ctx, shard, work_dir)
        with open(tmp / "pairs.jsonl", "w", encoding="utf-8") as fh:
            for row in ctx.pairs:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        with open(tmp / "rejects.jsonl", "w", encoding="utf-8") as fh:
            for row in ctx.funnel.rejects:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        meta = {
            "shard": shard.name,
            "inputs": list(shard.paths),
            "segments": [list(x) for x in shard.segments],
            "config_fingerprint": fingerprint,
            "skipped": ctx.skipped,
            "funnel": ctx.funnel.to_dict(),
        }
        (tmp / "funnel.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
        for fh_path in (tmp / "pairs.jsonl", tmp / "rejects.jsonl", tmp / "funnel.json"):
            with open(fh_path, "rb") as fh:
                os.fsync(fh.fileno())
        try:
            os.rename(tmp, final)
        except OSError:
            if final.is_dir():  # another worker (a retried task) committed the same shard first
                shutil.rmtree(tmp, ignore_errors=True)
                return {"shard": shard.name, "status": "skipped"}
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"shard": shard.name, "status": "done", "pairs": len(ctx.pairs)}
