"""The scoring engine: fill a caption x image score matrix block by block with any pair scorer.

Why blocks: they are the unit of sharding (ranks take pending blocks round-robin), of resumption (a block is
either entirely in the cache or recomputed) and of image reuse (a block's images are encoded once for all of its
captions). The engine knows nothing about models: a scorer is anything with
``score_pairs(caption_idx, image_idx) -> float32 scores``.

Cache layout (``cache_dir``): ``scores.npy`` a float32 memory-mapped matrix (NaN = not scored),
``done.rank<r>.npy`` one boolean block mask per rank (a block is done when ANY rank's mask says so, so a run can
resume with a different number of ranks), ``manifest.json`` the fingerprint of what is being scored. Mask files are
replaced atomically (write + fsync + rename) only after the block's scores are flushed, so a kill at any moment
leaves at worst a block to redo, never a block marked done with missing scores.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


class PairScorer(Protocol):
    def score_pairs(self, caption_idx: np.ndarray, image_idx: np.ndarray) -> np.ndarray:
        """Scores of pairs (caption_idx[n], image_idx[n]) as float32 [n]."""
        ...


@dataclass
class EngineStats:
    pairs_scored: int = 0  # cross-encoder passes made by this call (this rank)
    pairs_scored_all_ranks: int = 0
    pairs_total: int = 0  # pairs the matrix needs (all ranks, including cached)
    blocks_scored: int = 0
    blocks_cached: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class BlockPlan:
    num_captions: int
    num_images: int
    block_captions: int = 1000
    block_images: int = 100

    @property
    def grid(self) -> tuple[int, int]:
        return (
            -(-self.num_captions // self.block_captions),
            -(-self.num_images // self.block_images),
        )

    @property
    def num_blocks(self) -> int:
        g = self.grid
        return g[0] * g[1]

    def block(self, b: int) -> tuple[slice, slice]:
        rows, cols = self.grid
        r, c = divmod(b, cols)
        return (
            slice(r * self.block_captions, min((r + 1) * self.block_captions, self.num_captions)),
            slice(c * self.block_images, min((c + 1) * self.block_images, self.num_images)),
        )


def _dist_info() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class ScoreCache:
    """A resumable on-disk score matrix (see the module docstring for the layout)."""

    def __init__(self, directory: str | Path, plan: BlockPlan, fingerprint: dict, rank: int = 0) -> None:
        self.dir = Path(directory)
        self.plan = plan
        self.rank = rank
        self.fingerprint = {
            **fingerprint,
            "shape": [plan.num_captions, plan.num_images],
            "block": [plan.block_captions, plan.block_images],
        }
        self.scores_path = self.dir / "scores.npy"
        self.manifest_path = self.dir / "manifest.json"

    def create(self) -> None:
        """Rank 0 only: make the files (or check that the existing ones are for the same evaluation)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.manifest_path.exists():
            old = json.loads(self.manifest_path.read_text())
            if old != json.loads(json.dumps(self.fingerprint)):
                raise ValueError(
                    f"{self.dir}: the score cache belongs to a different evaluation ({old}); "
                    "use another cache directory or delete this one"
                )
            if self.scores_path.exists():
                return
        mm = np.lib.format.open_memmap(
            self.scores_path,
            mode="w+",
            dtype=np.float32,
            shape=(self.plan.num_captions, self.plan.num_images),
        )
        mm[:] = np.nan
        mm.flush()
        del mm
        for old_mask in self.dir.glob("done.rank*.npy"):
            old_mask.unlink()
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.fingerprint, indent=1))
        os.replace(tmp, self.manifest_path)

    def open(self) -> np.memmap:
        return np.lib.format.open_memmap(self.scores_path, mode="r+")

    def done_mask(self) -> np.ndarray:
        done = np.zeros(self.plan.num_blocks, dtype=bool)
        for path in self.dir.glob("done.rank*.npy"):
            try:
                m = np.load(path)
            except (OSError, ValueError):  # a torn file cannot exist (atomic rename), but be safe
                continue
            if m.shape == done.shape:
                done |= m
        return done

    def mark_done(self, own_mask: np.ndarray) -> None:
        _atomic_save(self.dir / f"done.rank{self.rank}.npy", own_mask)


def _score_block(
    scorer: PairScorer, plan: BlockPlan, b: int, need: np.ndarray | None
) -> tuple[np.ndarray, int]:
    rows, cols = plan.block(b)
    n_r, n_c = rows.stop - rows.start, cols.stop - cols.start
    block = np.full((n_r, n_c), np.nan, dtype=np.float32)
    if need is None:
        rr, cc = np.divmod(np.arange(n_r * n_c), n_c)
    else:
        rr, cc = np.nonzero(need[rows, cols])
    if rr.size:
        block[rr, cc] = scorer.score_pairs(rr + rows.start, cc + cols.start)
    return block, int(rr.size)


def score_matrix(
    scorer: PairScorer,
    num_captions: int,
    num_images: int,
    *,
    need: np.ndarray | None = None,
    cache_dir: str | Path | None = None,
    fingerprint: dict | None = None,
    block_captions: int = 1000,
    block_images: int = 100,
    max_blocks: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, EngineStats]:
    """Score every pair (or the pairs in boolean ``need`` [C, I]); NaN where a pair is not needed.

    Under ``torch.distributed`` each rank scores a share of the pending blocks; all ranks return the full matrix.
    With ``cache_dir`` the work survives interruption; ``max_blocks`` stops after that many new blocks (used to
    test resumption), and then the returned matrix is incomplete.
    """
    rank, world = _dist_info()
    plan = BlockPlan(num_captions, num_images, block_captions, block_images)
    stats = EngineStats(pairs_total=int(need.sum()) if need is not None else num_captions * num_images)
    t0 = time.perf_counter()
    if cache_dir is not None:
        cache = ScoreCache(cache_dir, plan, fingerprint or {}, rank=rank)
        if rank == 0:
            cache.create()
        _barrier()
        done = cache.done_mask()
        own_mask = done.copy()  # keep what earlier runs finished: this file replaces the old one
        matrix = cache.open()
    else:
        if world > 1:
            matrix = np.zeros((num_captions, num_images), dtype=np.float32)
        else:
            matrix = np.full((num_captions, num_images), np.nan, dtype=np.float32)
        done = np.zeros(plan.num_blocks, dtype=bool)
    pending = [b for b in range(plan.num_blocks) if not done[b]]
    stats.blocks_cached = plan.num_blocks - len(pending)
    mine = pending[rank::world]
    for n, b in enumerate(mine):
        if max_blocks is not None and n >= max_blocks:
            break
        block, count = _score_block(scorer, plan, b, need)
        rows, cols = plan.block(b)
        matrix[rows, cols] = block
        stats.pairs_scored += count
        stats.blocks_scored += 1
        if cache_dir is not None:
            matrix.flush()
            own_mask[b] = True
            cache.mark_done(own_mask)
        if progress is not None:
            progress(n + 1, len(mine))
    _barrier()
    stats.pairs_scored_all_ranks = stats.pairs_scored
    if world > 1:
        import torch
        import torch.distributed as dist

        counts = torch.tensor([stats.pairs_scored], dtype=torch.int64)
        dist.all_reduce(counts)
        stats.pairs_scored_all_ranks = int(counts.item())
    if cache_dir is not None:
        del matrix
        matrix = np.asarray(np.load(cache.scores_path, mmap_mode="r"))
    elif world > 1:
        import torch
        import torch.distributed as dist

        t = torch.from_numpy(np.nan_to_num(matrix, nan=0.0))
        dist.all_reduce(t)
        matrix = t.numpy()
        if need is not None:
            matrix[~need] = np.nan
    stats.seconds = time.perf_counter() - t0
    return matrix, stats
