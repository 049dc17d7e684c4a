"""First-stage nearest-neighbour search over L2-normalised embeddings: exact in torch, or faiss for large galleries.

Why exact torch by default: one [N, E] x [E] product is a few milliseconds up to ~100k items on a CPU, and it
ranks exactly like `imagebert evaluate --mode fast` (same scores, same tie rule: on equal scores the lower index
comes first, as `retrieval.rerank.topk_candidates`' stable sort does). faiss (`faiss-cpu`, optional) is used for
large galleries: `IndexFlatIP` is still exact (and multi-threaded), `hnsw` trades a little recall for speed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from imagebert.config_utils import ConfigError

BACKENDS = ("auto", "torch", "faiss", "faiss-hnsw")
AUTO_FAISS_ABOVE = (
    200_000  # items; below this the torch product is as fast as faiss flat (benchmarks/bench_serve)
)


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, num_items: int) -> str:
    """'auto' -> faiss (exact flat) above AUTO_FAISS_ABOVE items when faiss is installed, else torch."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "faiss" if num_items > AUTO_FAISS_ABOVE and faiss_available() else "torch"
    if backend.startswith("faiss") and not faiss_available():
        raise ConfigError(f"backend {backend!r} needs the optional package faiss-cpu (pip install faiss-cpu)")
    return backend


def stable_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k per row, highest first, ties broken by the lower index (the order a stable argsort gives).

    `torch.topk` is fast but does not promise an order among equal values; we take everything tied with the k-th
    value as well and sort that small set stably.
    """
    k = min(int(k), scores.shape[1])
    vals, _ = torch.topk(scores, k, dim=1)
    out_v = torch.empty((scores.shape[0], k), dtype=scores.dtype)
    out_i = torch.empty((scores.shape[0], k), dtype=torch.int64)
    for r in range(scores.shape[0]):
        idx = torch.nonzero(scores[r] >= vals[r, -1]).squeeze(1)
        order = torch.sort(-scores[r, idx], stable=True).indices[:k]
        out_i[r] = idx[order]
        out_v[r] = scores[r, out_i[r]]
    return out_v, out_i


class ExactSearch:
    """Exact inner product in torch over an [N, E] float32 matrix (kept in memory)."""

    name = "torch"

    def __init__(self, embeddings: np.ndarray) -> None:
        self.emb = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))

    def __len__(self) -> int:
        return int(self.emb.shape[0])

    def add(self, embeddings: np.ndarray) -> None:
        self.emb = torch.cat([self.emb, torch.from_numpy(np.asarray(embeddings, dtype=np.float32))])

    def scores(self, queries: np.ndarray) -> np.ndarray:
        return (torch.from_numpy(np.asarray(queries, np.float32)) @ self.emb.T).numpy()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self) == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        s = torch.from_numpy(np.asarray(queries, np.float32)) @ self.emb.T
        v, i = stable_topk(s, k)
        return v.numpy(), i.numpy()


class FaissSearch:
    """faiss inner-product index: flat (exact) or HNSW (approximate, `hnsw_m` links per node)."""

    def __init__(self, embeddings: np.ndarray, hnsw_m: int | None = None, path: Path | None = None) -> None:
        import faiss

        self.faiss = faiss
        self.name = "faiss" if hnsw_m is None else "faiss-hnsw"
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        dim = emb.shape[1]
        if path is not None and path.is_file():
            self.index = faiss.read_index(str(path))
            if self.index.ntotal != len(emb):  # stale: rebuild rather than answer with wrong rows
                self.index = None
        else:
            self.index = None
        if self.index is None:
            if hnsw_m is None:
                self.index = faiss.IndexFlatIP(dim)
            else:
                self.index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
                self.index.hnsw.efSearch = 128
            if len(emb):
                self.index.add(emb)
            if path is not None and hnsw_m is not None:
                tmp = path.with_name(path.name + ".tmp")
                faiss.write_index(self.index, str(tmp))
                tmp.replace(path)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, embeddings: np.ndarray) -> None:
        self.index.add(np.ascontiguousarray(embeddings, dtype=np.float32))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(int(k), len(self))
        v, i = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return v.astype(np.float32), i.astype(np.int64)


def make_search(backend: str, embeddings: np.ndarray, cache_path: Path | None = None):
    """The first-stage search object for `backend` (resolved against the gallery size)."""
    chosen = resolve_backend(backend, len(embeddings))
    if chosen == "torch":
        return ExactSearch(embeddings)
    if chosen == "faiss":
        return FaissSearch(embeddings)
    return FaissSearch(embeddings, hnsw_m=32, path=cache_path)
