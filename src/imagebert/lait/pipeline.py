"""Orchestration: find shards, run the pending ones on Dask (local processes or a cluster), then aggregate.

The same code path serves `--workers 1` (in-process, for debugging), a `distributed.LocalCluster` (the default),
and `--scheduler ADDRESS` (an existing cluster; the output folder must be on storage every worker can see).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from imagebert.lait.aggregate import aggregate
from imagebert.lait.config import LaitConfig
from imagebert.lait.shard import process_shard, shard_dir
from imagebert.lait.sources import Shard, discover_shards


class LaitRunError(RuntimeError):
    """Some shards failed; the others are committed and a re-run retries only the failed ones."""


def start_local_cluster(workers: int):
    """A LocalCluster of single-threaded worker processes, without Dask's default MALLOC_TRIM_THRESHOLD_.

    Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers to limit unmanaged memory; setting it at all
    turns off glibc's dynamic mmap threshold, so every decoded image buffer (hundreds of KiB) becomes an
    mmap/munmap pair with fresh page faults. Measured here: the same shards took 1.5x the CPU time with it.
    """
    import dask
    from distributed import LocalCluster

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )


def _run_dask(
    pending: list[Shard], cfg: LaitConfig, work_dir: Path, scheduler: str | None, workers: int
) -> list:
    from distributed import Client, as_completed

    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = start_local_cluster(workers)
        client = Client(cluster)
    results: list[Any] = []
    try:
        futures = client.map(
            process_shard, pending, cfg=cfg, work_dir=str(work_dir), pure=False, retries=cfg.run.retries
        )
        name_of = {f.key: s.name for f, s in zip(futures, pending, strict=True)}
        for fut in as_completed(futures):
            try:
                results.append(fut.result())
            except Exception as exc:  # noqa: BLE001 - report every failed shard, keep the others
                results.append(
                    {"shard": name_of[fut.key], "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
                )
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return results


def run_lait(
    inputs: list[str | Path],
    out_dir: str | Path,
    cfg: LaitConfig,
    scheduler: str | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Run the whole pipeline; returns a summary. Re-running the same command resumes where it stopped."""
    out_dir = Path(out_dir)
    work_dir = out_dir / "work"
    (work_dir / "shards").mkdir(parents=True, exist_ok=True)
    for stale in (work_dir / "shards").glob(".tmp-*"):  # left by a crashed or killed worker
        shutil.rmtree(stale, ignore_errors=True)
    shards = discover_shards(inputs, cfg.run.html_files_per_shard)
    pending = [s for s in shards if not shard_dir(work_dir, s).is_dir()]
    workers = cfg.run.workers if workers is None else workers
    t0 = time.perf_counter()
    if not pending:
        results = []
    elif scheduler is None and workers <= 1:
        results = []
        for s in pending:
            try:
                results.append(process_shard(s, cfg, work_dir))
            except Exception as exc:  # noqa: BLE001 - same contract as the Dask path
                results.append({"shard": s.name, "status": "failed", "error": f"{type(exc).__name__}: {exc}"})
    else:
        results = _run_dask(pending, cfg, work_dir, scheduler, min(workers, len(pending)))
    elapsed = time.perf_counter() - t0
    for stale in (work_dir / "shards").glob(".tmp-*"):  # from attempts whose worker died and was retried
        shutil.rmtree(stale, ignore_errors=True)
    failed = [r for r in results if r.get("status") == "failed"]
    if failed:
        lines = "; ".join(f"{r['shard']}: {r['error']}" for r in failed)
        raise LaitRunError(f"{len(failed)} of {len(pending)} shards failed (re-run to retry them): {lines}")
    agg = aggregate(work_dir, out_dir, [s.name for s in shards], cfg)
    return {
        "shards": len(shards),
        "processed": sum(1 for r in results if r.get("status") == "done"),
        "skipped": len(shards) - len(pending) + sum(1 for r in results if r.get("status") == "skipped"),
        "pairs": agg["pairs"],
        "shard_seconds": elapsed,
        "funnel": agg["funnel"],
    }
