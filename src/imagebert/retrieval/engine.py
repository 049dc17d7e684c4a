"""The scoring engine: fill a caption x image score matrix block by block with any pair scorer.

Why blocks: they are the unit of sharding (ranks take pending blocks round-robin), of resumption (a block is
either entirely in the cache or recomputed) and of image reuse (a block's images are encoded once for all of its
captions; blocks that need few pairs, as in fast mode, share one scorer call, see `call_groups`). The engine
knows nothing about models: a scorer is anything with
``score_pairs(caption_idx, image_idx) -> float32 scores``.

Cache layout (``cache_dir``): ``scores.npy`` a float32 memory-mapped matrix (NaN = not scored),
``blocks.rank<r>.npy`` one int64 entry per block and rank: -1 = not done, else the CRC-32 of the block's float32
bytes (a block is done when ANY rank's file holds a checksum that its scores match, so a run can resume with a
different number of ranks), ``manifest.json`` the fingerprint of what is being scored. Block files are replaced
atomically (write + fsync + rename) only after the block's scores are flushed, so a kill at any moment leaves at
worst a block to redo, never a block marked done with missing scores.

Why checksums: the memory map zero-fills a truncated ``scores.npy`` and a done mask alone would trust those zeros
(wrong recalls with exit 0). On open the file size is checked against its header (a wrong size rebuilds the
matrix) and every done block is checked against its checksum (a mismatch is logged and the block recomputed).
Caches from before the checksums (only ``done.rank<r>.npy`` masks) are recomputed, never trusted; the masks are
still written next to the checksum files for tools that read them.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from imagebert.errors import InputError
from imagebert.runtime.atomic import atomic_save_npy, atomic_write_text

log = logging.getLogger(__name__)
BLOCKS_GLOB = "blocks.rank*.npy"


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
    blocks_corrupt: int = 0  # marked done but failing their checksum: recomputed
    seconds: float = 0.0


@dataclass(frozen=True)
class BlockPlan:
    num_captions: int
    num_images: int
    block_captions: int = 1000
    block_images: int = 100

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """ConfigError (a ValueError) naming the setting."""
        from imagebert.config_utils import ConfigError

        for name in ("block_captions", "block_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ConfigError(f"{name} (--block) must be a positive integer, got {value!r}")
        if self.num_captions < 0 or self.num_images < 0:
            raise ConfigError("the score matrix cannot have a negative size")

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
    from imagebert.runtime.distributed import current_rank_world

    return current_rank_world()


def _barrier() -> None:
    from imagebert.runtime.distributed import barrier

    barrier()


def _atomic_save(path: Path, array: np.ndarray) -> None:
    atomic_save_npy(path, array)


def block_checksum(block: np.ndarray) -> int:
    """CRC-32 of a block's float32 bytes (NaN entries included, bit for bit)."""
    return zlib.crc32(np.ascontiguousarray(block, dtype=np.float32).tobytes())


def _npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int] | None:
    """(shape, dtype, data offset) from a .npy header, or None when the header is unreadable."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            return tuple(shape), dtype, fh.tell()
    except (OSError, ValueError, EOFError):
        return None


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

    def scores_file_problem(self) -> str | None:
        """Why scores.npy cannot be trusted as a whole (wrong header, or a size that does not match it)."""
        layout = _npy_layout(self.scores_path)
        if layout is None:
            return "unreadable header"
        shape, dtype, offset = layout
        want = (self.plan.num_captions, self.plan.num_images)
        if shape != want or dtype != np.dtype(np.float32):
            return f"holds {dtype} {shape}, expected float32 {want}"
        size = os.path.getsize(self.scores_path)
        expected = offset + int(np.prod(want)) * 4
        if size != expected:
            return f"is {size} bytes, its header says {expected} (truncated or overwritten)"
        return None

    def create(self) -> None:
        """Rank 0 only: make the files (or check that the existing ones are for the same evaluation)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.manifest_path.exists():
            try:
                old = json.loads(self.manifest_path.read_text())
            except (OSError, ValueError):
                old = None
                log.warning("%s: unreadable manifest.json; the score cache is rebuilt", self.dir)
            if old is not None and old != json.loads(json.dumps(self.fingerprint)):
                raise InputError(
                    f"{self.dir}: the score cache belongs to a different evaluation ({old}); "
                    "use another cache directory or delete this one"
                )
            if old is not None and self.scores_path.exists():
                problem = self.scores_file_problem()
                if problem is None:
                    return
                log.warning("%s: %s; every block is recomputed", self.scores_path, problem)
        mm = np.lib.format.open_memmap(
            self.scores_path,
            mode="w+",
            dtype=np.float32,
            shape=(self.plan.num_captions, self.plan.num_images),
        )
        mm[:] = np.nan
        mm.flush()
        del mm
        for old_mask in [*self.dir.glob("done.rank*.npy"), *self.dir.glob(BLOCKS_GLOB)]:
            old_mask.unlink()
        atomic_write_text(self.manifest_path, json.dumps(self.fingerprint, indent=1))

    def open(self) -> np.memmap:
        problem = self.scores_file_problem()
        if (
            problem is not None
        ):  # rank 0 checked it in create(); a change since then is not ours to paper over
            raise InputError(f"{self.scores_path}: {problem}; delete the score cache and run again")
        return np.lib.format.open_memmap(self.scores_path, mode="r+")

    def recorded_checksums(self) -> list[np.ndarray]:
        """Each rank file's per-block checksums (-1 = not done); unreadable or wrong-length files are ignored."""
        out = []
        for path in sorted(self.dir.glob(BLOCKS_GLOB)):
            try:
                m = np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError):
                log.warning("%s: unreadable; its blocks are recomputed", path)
                continue
            if m.shape == (self.plan.num_blocks,) and m.dtype.kind == "i":
                out.append(m.astype(np.int64))
        if not out and any(self.dir.glob("done.rank*.npy")):
            log.warning("%s: cache written without block checksums; its blocks are recomputed", self.dir)
        return out

    def verified(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """(done mask, checksum per block (-1 = not done), number of blocks marked done that fail their check)."""
        files = self.recorded_checksums()
        done = np.zeros(self.plan.num_blocks, dtype=bool)
        crcs = np.full(self.plan.num_blocks, -1, dtype=np.int64)
        bad = 0
        if not files:
            return done, crcs, 0
        stacked = np.stack(files)
        for b in np.nonzero((stacked >= 0).any(axis=0))[0]:
            rows, cols = self.plan.block(int(b))
            actual = block_checksum(matrix[rows, cols])
            if actual in stacked[:, b]:
                done[b] = True
                crcs[b] = actual
            else:
                bad += 1
        if bad:
            log.warning(
                "%s: %d block(s) marked done do not match their checksum (corrupted scores.npy); recomputing them",
                self.scores_path, bad,
            )  # fmt: skip
        return done, crcs, bad

    def mark_done(self, own_checksums: np.ndarray) -> None:
        _atomic_save(self.dir / f"blocks.rank{self.rank}.npy", own_checksums)
        # the plain mask, for tools that read it; resumption trusts only the checksum file above
        _atomic_save(self.dir / f"done.rank{self.rank}.npy", own_checksums >= 0)


def _block_cells(plan: BlockPlan, b: int, need: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) within block b of the pairs to score, row-major."""
    rows, cols = plan.block(b)
    n_r, n_c = rows.stop - rows.start, cols.stop - cols.start
    if need is None:
        return np.divmod(np.arange(n_r * n_c), n_c)
    return np.nonzero(need[rows, cols])


def _score_blocks(
    scorer: PairScorer, plan: BlockPlan, group: list[int], need: np.ndarray | None
) -> list[tuple[np.ndarray, int]]:
    """The blocks of `group` in one `score_pairs` call: (scores with NaN where not needed, pairs) per block."""
    spans = [plan.block(b) for b in group]
    cells = [_block_cells(plan, b, need) for b in group]
    caption_idx = np.concatenate([rr + rows.start for (rows, _), (rr, _) in zip(spans, cells, strict=True)])
    image_idx = np.concatenate([cc + cols.start for (_, cols), (_, cc) in zip(spans, cells, strict=True)])
    scores = scorer.score_pairs(caption_idx, image_idx) if caption_idx.size else np.empty(0, np.float32)
    out, start = [], 0
    for (rows, cols), (rr, cc) in zip(spans, cells, strict=True):
        block = np.full((rows.stop - rows.start, cols.stop - cols.start), np.nan, dtype=np.float32)
        block[rr, cc] = scores[start : start + rr.size]
        start += rr.size
        out.append((block, int(rr.size)))
    return out


def call_groups(plan: BlockPlan, blocks: list[int], need: np.ndarray | None) -> list[list[int]]:
    """Consecutive blocks merged into one scorer call while their pairs fit in one full block's worth.

    Why: fast mode needs a few pairs per block, and scoring each block on its own gives short, ragged batches
    sorted over few pairs; merged, the scorer sorts a full block's worth and its batches carry less padding. A
    full block is always a call of its own, and the rule looks only at pair counts, so exhaustive mode and fast
    mode with every pair needed make the same calls (and the same scores, bit for bit)."""
    cap = plan.block_captions * plan.block_images
    groups: list[list[int]] = []
    current: list[int] = []
    pairs = 0
    for b in blocks:
        n = _block_pairs(plan, b, need)
        if current and pairs + n > cap:
            groups.append(current)
            current, pairs = [], 0
        current.append(b)
        pairs += n
    if current:
        groups.append(current)
    return groups


def _block_pairs(plan: BlockPlan, b: int, need: np.ndarray | None) -> int:
    rows, cols = plan.block(b)
    if need is None:
        return (rows.stop - rows.start) * (cols.stop - cols.start)
    return int(need[rows, cols].sum())


def _first_blocks(groups: list[list[int]], max_blocks: int | None) -> list[list[int]]:
    """The groups cut down to their first `max_blocks` blocks in all (None: all of them)."""
    if max_blocks is None:
        return groups
    out, left = [], max_blocks
    for g in groups:
        if left <= 0:
            break
        out.append(g[:left])
        left -= len(out[-1])
    return out


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
    on_pending: Callable[[int], None] | None = None,
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
        matrix = cache.open()
        done, own_crcs, stats.blocks_corrupt = cache.verified(matrix)
        # own_crcs keeps what earlier runs finished: this rank's file replaces its old one
        _barrier()  # every rank has verified before any rank rewrites a block
    else:
        if world > 1:
            matrix = np.zeros((num_captions, num_images), dtype=np.float32)
        else:
            matrix = np.full((num_captions, num_images), np.nan, dtype=np.float32)
        done = np.zeros(plan.num_blocks, dtype=bool)
    # groups over the whole plan, then shared round-robin: the calls (and so the scores, bit for bit) do not depend
    # on the number of ranks or on what an earlier run cached (a group is marked done as a whole)
    pending = [[b for b in g if not done[b]] for g in call_groups(plan, list(range(plan.num_blocks)), need)]
    pending = [g for g in pending if g]
    stats.blocks_cached = plan.num_blocks - sum(len(g) for g in pending)
    mine = _first_blocks(pending[rank::world], max_blocks)
    if on_pending is not None:  # the pairs this rank will score (for a progress bar's total and ETA)
        on_pending(sum(_block_pairs(plan, b, need) for g in mine for b in g))
    n = 0
    total = sum(len(g) for g in mine)
    for group in mine:
        for b, (block, count) in zip(group, _score_blocks(scorer, plan, group, need), strict=True):
            rows, cols = plan.block(b)
            matrix[rows, cols] = block
            stats.pairs_scored += count
            stats.blocks_scored += 1
            if cache_dir is not None:
                own_crcs[b] = block_checksum(block)
        if cache_dir is not None:  # scores flushed before the blocks are marked done
            matrix.flush()
            cache.mark_done(own_crcs)
        for _ in group:
            n += 1
            if progress is not None:
                progress(n, total)
    _barrier()
    stats.pairs_scored_all_ranks = stats.pairs_scored
    if world > 1:
        import torch

        from imagebert.runtime.distributed import all_reduce_sum

        counts = all_reduce_sum(None, torch.tensor([stats.pairs_scored], dtype=torch.int64))
        stats.pairs_scored_all_ranks = int(counts.item())
    if cache_dir is not None:
        del matrix
        matrix = np.asarray(np.load(cache.scores_path, mmap_mode="r"))
    elif world > 1:
        import torch

        from imagebert.runtime.distributed import all_reduce_sum

        t = all_reduce_sum(None, torch.from_numpy(np.nan_to_num(matrix, nan=0.0)))
        matrix = t.numpy()
        if need is not None:
            matrix[~need] = np.nan
    stats.seconds = time.perf_counter() - t0
    return matrix, stats
