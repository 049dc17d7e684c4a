"""Query answering: first stage (contrastive embeddings, exact or faiss) then cross-encoder re-ranking of the top n.

The ordering rule is fast mode's (`retrieval.rerank`): a query's n candidates are the first stage's top n (ties to
the lower index), ordered by the cross-encoder; the items after them keep their first-stage order. The
cross-encoder is `retrieval.scorers.ModelPairScorer` itself (length-sorted batches, fp32 score head under
autocast), so a service answer and `imagebert evaluate --mode fast --k n` rank a query the same way.

All model work runs on one worker thread (`ModelWorker`): it collects the requests waiting at that moment (up to
`max_batch_pairs` pairs) and runs them as one batched pass, so concurrent clients share forward passes, and the
model (whose score head `fp32_score_head` swaps temporarily) is never used by two threads at once.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from imagebert.data.types import RegionRecord
from imagebert.retrieval.scorers import Gallery, ModelPairScorer, autocast, resolve_precision
from imagebert.serve.index import GalleryIndex
from imagebert.serve.knn import make_search

STAGE_CROSS = "cross-encoder"
STAGE_FIRST = "first-stage"


@dataclass
class _Job:
    kind: str  # "text" | "image" | "pairs"
    texts: list[str] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)  # (key, RegionRecord) for pairs; RegionRecord for image
    pairs: tuple[np.ndarray, np.ndarray] | None = None
    future: Future = field(default_factory=Future)

    @property
    def size(self) -> int:
        if self.kind == "pairs":
            return len(self.pairs[0])
        return max(len(self.texts), len(self.records))


class ModelWorker:
    """One thread that owns the model; jobs waiting together are batched into shared forward passes."""

    def __init__(self, model: Any, collator: Any, *, device: str = "cpu", precision: str = "auto",
                 batch_size: int = 64, max_batch_pairs: int = 1024, max_wait_ms: float = 2.0,
                 weights: str = "fp32") -> None:  # fmt: skip
        """`weights` "int8": the cross-encoder re-ranks with a copy whose encoder layers run int8 matmuls (CPU,
        fp32 activations, `imagebert.runtime.quantize`); the query embeddings keep the model's own weights, so
        they match the index's."""
        self.model = model.eval()
        self.collator = collator
        self.device = torch.device(device)
        self.precision = precision
        self.dtype = resolve_precision(precision, self.device)
        self.weights = weights
        self.cross_model, self.cross_precision = self.model, precision
        if weights == "int8":
            from imagebert.runtime.quantize import int8_encoder_copy, int8_setting_conflict

            conflict = int8_setting_conflict(device=str(self.device), precision=precision)
            if conflict:
                raise ValueError(conflict)
            self.cross_model, self.cross_precision = int8_encoder_copy(self.model), "fp32"
        elif weights != "fp32":
            raise ValueError(f"serve weights must be fp32 or int8, got {weights!r}")
        self.batch_size = batch_size
        self.max_batch_pairs = max_batch_pairs
        self.max_wait = max_wait_ms / 1000.0
        self.queue: queue.Queue[_Job | None] = queue.Queue()
        self.batches = 0
        self.largest_batch = 0
        self._thread = threading.Thread(target=self._loop, name="imagebert-model", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.queue.put(None)
        self._thread.join(timeout=10)

    def submit(self, job: _Job) -> Any:
        self.queue.put(job)
        return job.future.result()

    # the three kinds of work ----------------------------------------------------------------------------
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.submit(_Job("text", texts=list(texts)))

    def encode_images(self, records: list[RegionRecord]) -> np.ndarray:
        return self.submit(_Job("image", records=list(records)))

    def score_pairs(self, texts: list[str], records: list[tuple[Any, RegionRecord]], text_idx: np.ndarray,
                    image_idx: np.ndarray) -> tuple[np.ndarray, int]:  # fmt: skip
        """Cross-encoder scores of (texts[text_idx[n]], records[image_idx[n]]); records are (key, record) and
        equal keys are encoded once per batch. Also returns how many requests shared the batch."""
        return self.submit(_Job("pairs", texts=list(texts), records=list(records),
                                pairs=(np.asarray(text_idx, np.int64), np.asarray(image_idx, np.int64))))  # fmt: skip

    # the loop -------------------------------------------------------------------------------------------
    def _gather(self, first: _Job) -> list[_Job]:
        jobs, total = [first], first.size
        deadline = time.perf_counter() + self.max_wait
        while total < self.max_batch_pairs:
            timeout = deadline - time.perf_counter()
            try:
                job = self.queue.get(timeout=max(timeout, 0)) if timeout > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self.queue.put(None)
                break
            jobs.append(job)
            total += job.size
        return jobs

    def _loop(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            jobs = self._gather(job)
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(jobs))
            for kind in ("text", "image", "pairs"):
                group = [j for j in jobs if j.kind == kind]
                if not group:
                    continue
                try:
                    with torch.no_grad():
                        getattr(self, f"_run_{kind}")(group)
                except Exception as exc:  # a failed batch fails its requests, never the worker
                    for j in group:
                        if not j.future.done():
                            j.future.set_exception(exc)

    def _run_text(self, group: list[_Job]) -> None:
        texts = [t for j in group for t in j.texts]
        enc = self.collator.encode_text(texts)
        with autocast(self.device, self.dtype):
            e = self.model.encode_text(
                enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
            )
        _deliver(group, e.float().cpu().numpy(), [len(j.texts) for j in group])

    def _run_image(self, group: list[_Job]) -> None:
        records = [r for j in group for r in j.records]
        reg = self.collator.encode_regions(records)
        with autocast(self.device, self.dtype):
            e = self.model.encode_image(reg["region_features"].to(self.device),
                                        reg["region_locations"].to(self.device),
                                        reg["region_mask"].to(self.device))  # fmt: skip
        _deliver(group, e.float().cpu().numpy(), [len(j.records) for j in group])

    def _run_pairs(self, group: list[_Job]) -> None:
        texts: list[str] = []
        slot: dict[Any, int] = {}
        records: list[RegionRecord] = []
        cap_idx, img_idx, bounds = [], [], []
        for j in group:
            t_off = len(texts)
            texts.extend(j.texts)
            local = []
            for key, rec in j.records:
                if key not in slot:
                    slot[key] = len(records)
                    records.append(rec)
                local.append(slot[key])
            local = np.asarray(local, dtype=np.int64)
            cap_idx.append(j.pairs[0] + t_off)
            img_idx.append(local[j.pairs[1]])
            bounds.append(len(j.pairs[0]))
        gallery = Gallery(texts=texts, caption_image=np.zeros(len(texts), np.int64),
                          image_ids=[str(k) for k in slot], get_record=lambda i: records[i])  # fmt: skip
        scorer = ModelPairScorer(self.cross_model, self.collator, gallery, device=self.device,
                                 precision=self.cross_precision, batch_size=self.batch_size)  # fmt: skip
        scores = scorer.score_pairs(np.concatenate(cap_idx), np.concatenate(img_idx))
        start = 0
        for j, n in zip(group, bounds, strict=True):
            j.future.set_result((scores[start : start + n], len(group)))
            start += n


def rerank_order(cross: np.ndarray) -> np.ndarray:
    """Candidates by cross-encoder score, highest first; ties keep the first-stage order (stable)."""
    return np.argsort(-np.asarray(cross, np.float32), kind="stable")


class Searcher:
    """Answers the two kinds of query over a loaded `GalleryIndex`."""

    def __init__(self, index: GalleryIndex, worker: ModelWorker, *, backend: str | None = None) -> None:
        self.index = index
        self.worker = worker
        self.backend = backend or index.meta.get("backend", "auto")
        self.image_search = make_search(self.backend, index.image_emb, index.path / "image.hnsw.faiss")
        self.caption_search = make_search(self.backend, index.caption_emb, index.path / "caption.hnsw.faiss")

    def _results(
        self, first_idx, first_scores, cross, n_rerank, top_k
    ) -> list[tuple[int, float, str, float]]:  # noqa: ANN001
        """(item, score, stage, first-stage score): re-ranked candidates, then the rest by the first stage."""
        out = []
        if n_rerank:
            for o in rerank_order(cross):
                out.append((int(first_idx[o]), float(cross[o]), STAGE_CROSS, float(first_scores[o])))
        for j in range(n_rerank, len(first_idx)):
            out.append((int(first_idx[j]), float(first_scores[j]), STAGE_FIRST, float(first_scores[j])))
        return out[:top_k]

    def search_images(self, query: str, top_k: int = 10, rerank: int = 20) -> dict:
        t0 = time.perf_counter()
        q = self.worker.encode_texts([query])
        t1 = time.perf_counter()
        s1, i1 = self.image_search.search(q, max(top_k, rerank))
        s1, i1 = s1[0], i1[0]
        t2 = time.perf_counter()
        n = min(rerank, len(i1))
        cross, shared = np.zeros(0, np.float32), 0
        if n:
            recs = [(("idx", int(i)), self.index.record(int(i))) for i in i1[:n]]
            cross, shared = self.worker.score_pairs([query], recs, np.zeros(n, np.int64), np.arange(n))
        t3 = time.perf_counter()
        rows = self._results(i1, s1, cross, n, top_k)
        return {
            "results": [
                self._image_result(r, item, score, stage, fs)
                for r, (item, score, stage, fs) in enumerate(rows)
            ],  # fmt: skip
            "reranked": n,
            "timings_ms": _timings(t0, t1, t2, t3, shared),
        }

    def search_captions(self, *, image: int | None = None, record: RegionRecord | None = None, top_k: int = 10,
                        rerank: int = 20) -> dict:  # fmt: skip
        t0 = time.perf_counter()
        if image is not None:
            q = self.index.image_emb[image : image + 1]
            rec, key = self.index.record(image), ("idx", image)
        else:
            q = self.worker.encode_images([record])
            rec, key = record, ("upload", id(record))
        t1 = time.perf_counter()
        s1, i1 = self.caption_search.search(q, max(top_k, rerank))
        s1, i1 = s1[0], i1[0]
        t2 = time.perf_counter()
        n = min(rerank, len(i1))
        cross, shared = np.zeros(0, np.float32), 0
        if n:
            texts = [self.index.captions[int(c)]["text"] for c in i1[:n]]
            cross, shared = self.worker.score_pairs(texts, [(key, rec)], np.arange(n), np.zeros(n, np.int64))
        t3 = time.perf_counter()
        rows = self._results(i1, s1, cross, n, top_k)
        results = []
        for r, (item, score, stage, fs) in enumerate(rows):
            c = self.index.captions[item]
            results.append({"rank": r + 1, "caption": c["text"], "caption_id": c["caption_id"],
                            "image_id": c["image_id"], "score": score, "stage": stage,
                            "first_stage_score": fs})  # fmt: skip
        return {"results": results, "reranked": n, "timings_ms": _timings(t0, t1, t2, t3, shared)}

    def _image_result(self, r: int, item: int, score: float, stage: str, fs: float) -> dict:
        meta = self.index.images[item]
        return {"rank": r + 1, "image_id": meta["id"], "score": score, "stage": stage, "first_stage_score": fs,
                "image_url": f"/images/{meta['id']}" if meta.get("thumb") else None, "width": meta["width"],
                "height": meta["height"], "boxes": meta["boxes"]}  # fmt: skip


def _timings(t0: float, t1: float, t2: float, t3: float, shared: int) -> dict:
    return {"encode_query": 1000 * (t1 - t0), "first_stage": 1000 * (t2 - t1), "rerank": 1000 * (t3 - t2),
            "total": 1000 * (t3 - t0), "requests_in_rerank_batch": shared}  # fmt: skip


def _deliver(group: list[_Job], rows: np.ndarray, counts: list[int]) -> None:
    """Hand each job of a batched pass its own consecutive rows."""
    start = 0
    for job, n in zip(group, counts, strict=True):
        job.future.set_result(rows[start : start + n])
        start += n
