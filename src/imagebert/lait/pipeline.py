"""Orchestration: find shards, run the pending ones on Dask (local processes or a cluster), then aggregate.

The same code path serves `--workers 1` (in-process, for debugging), a `distributed.LocalCluster` (the default),
and `--scheduler ADDRESS` (an existing cluster; the output folder must be on storage every worker can see).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from imagebert.lait.aggregate import aggregate
from imagebert.lait.config import LaitConfig
from imagebert.lait.funnel import Funnel
from imagebert.lait.plan import build_index, config_fingerprint, index_file_for, plan_tasks
from imagebert.lait.shard import process_shard, shard_dir
from imagebert.lait.sources import Shard, discover_inputs


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


def _in_worker_threads_1() -> None:
    """Inside a Dask worker, torch (the photo classifier) must not start one thread per core in every worker."""
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def _index_task(warc: str, work_dir: str) -> dict[str, Any]:
    return build_index(warc, work_dir)


def _shard_task(shard: Shard, cfg: LaitConfig, work_dir: str, fingerprint: str) -> dict[str, Any]:
    _in_worker_threads_1()
    return process_shard(shard, cfg, work_dir, fingerprint)


class _Executor:
    """One place that runs a list of calls: in this process, on a LocalCluster, or on a running scheduler.
    A failing call is reported as {"status": "failed"} and the others go on."""

    def __init__(self, scheduler: str | None, workers: int) -> None:
        self.client = self.cluster = None
        if scheduler:
            from distributed import Client

            self.client = Client(scheduler)
        elif workers > 1:
            from distributed import Client

            self.cluster = start_local_cluster(workers)
            self.client = Client(self.cluster)

    def map(self, fn, items: list, names: list[str], retries: int = 0, **kw) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        if not items:
            return results
        if self.client is None:
            for item, name in zip(items, names, strict=True):
                try:
                    results.append(fn(item, **kw))
                except Exception as exc:  # noqa: BLE001 - same contract as the Dask path
                    results.append(
                        {"shard": name, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
                    )
            return results
        from distributed import as_completed

        futures = self.client.map(fn, items, pure=False, retries=retries, **kw)
        name_of = {f.key: n for f, n in zip(futures, names, strict=True)}
        for fut in as_completed(futures):
            try:
                results.append(fut.result())
            except Exception as exc:  # noqa: BLE001 - report every failed task, keep the others
                results.append(
                    {"shard": name_of[fut.key], "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
                )
        return results

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _absolute_paths(cfg: LaitConfig) -> LaitConfig:
    """Paths inside the config resolved here, in the client: a worker may run in another directory."""
    cfg = copy.deepcopy(cfg)
    if cfg.images.mirror_dir:
        cfg.images.mirror_dir = str(Path(cfg.images.mirror_dir).expanduser().resolve())
    if cfg.images.photo_model:
        cfg.images.photo_model = str(Path(cfg.images.photo_model).expanduser().resolve())
    if cfg.scoring.model and Path(cfg.scoring.model).exists():
        cfg.scoring.model = str(Path(cfg.scoring.model).expanduser().resolve())
    return cfg


def run_warnings(funnel: Funnel, cfg: LaitConfig, skipped: list[dict]) -> list[str]:
    """What a user must not miss: a step that dropped almost everything, bytes skipped in a WARC."""
    out = []
    for name, step in funnel.to_dict()["steps"].items():
        n_in = step["in"]
        dropped = n_in - step["kept"]
        if n_in >= cfg.run.warn_min_in and dropped > cfg.run.warn_drop_share * n_in:
            top = sorted(step["dropped"].items(), key=lambda kv: -kv[1])[:3]
            out.append(
                f"step '{name}' dropped {dropped} of {n_in} ({dropped / n_in:.0%} > run.warn_drop_share = "
                f"{cfg.run.warn_drop_share:.0%}); top reasons: " + ", ".join(f"{r} {n}" for r, n in top)
            )
    if skipped:
        total = sum(s["bytes"] for s in skipped)
        regions = sum(s["regions"] for s in skipped)
        files = ", ".join(
            f"{Path(s['file']).name} ({s['bytes']} bytes, {s['regions']} regions)" for s in skipped
        )
        out.append(
            f"skipped {total} unreadable bytes in {regions} regions of {len(skipped)} WARC files, resynchronised "
            f"at the next record: {files}"
        )
    return out


def run_lait(
    inputs: list[str | Path],
    out_dir: str | Path,
    cfg: LaitConfig,
    scheduler: str | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Run the whole pipeline; returns a summary. Re-running the same command resumes where it stopped."""
    cfg.validate()
    cfg = _absolute_paths(cfg)
    out_dir = Path(out_dir).expanduser().resolve()
    work_dir = out_dir / "work"
    shards_root = work_dir / "shards"
    shards_root.mkdir(parents=True, exist_ok=True)
    for stale in shards_root.glob(".tmp-*"):  # left by a crashed or killed worker
        shutil.rmtree(stale, ignore_errors=True)
    warcs, html_shards = discover_inputs(inputs, cfg.run.html_files_per_shard)
    fingerprint = config_fingerprint(cfg)
    workers = cfg.run.workers if workers is None else workers
    t0 = time.perf_counter()
    ex = _Executor(scheduler, workers)
    try:
        need_index = [w for w in warcs if not index_file_for(work_dir, w).is_file()]
        failed = [
            r
            for r in ex.map(
                _index_task, need_index, need_index, retries=cfg.run.retries, work_dir=str(work_dir)
            )
            if r.get("status") == "failed"
        ]
        if failed:
            lines = "; ".join(f"{r['shard']}: {r['error']}" for r in failed)
            raise LaitRunError(f"{len(failed)} WARC files could not be indexed: {lines}")
        shards = plan_tasks(warcs, html_shards, work_dir, cfg, fingerprint)
        pending = [s for s in shards if not shard_dir(work_dir, s).is_dir()]
        results = ex.map(
            _shard_task,
            pending,
            [s.name for s in pending],
            retries=cfg.run.retries,
            cfg=cfg,
            work_dir=str(work_dir),
            fingerprint=fingerprint,
        )
    finally:
        ex.close()
    elapsed = time.perf_counter() - t0
    for stale in shards_root.glob(".tmp-*"):  # from attempts whose worker died and was retried
        shutil.rmtree(stale, ignore_errors=True)
    failed = [r for r in results if r.get("status") == "failed"]
    if failed:
        lines = "; ".join(f"{r['shard']}: {r['error']}" for r in failed)
        raise LaitRunError(f"{len(failed)} of {len(pending)} shards failed (re-run to retry them): {lines}")
    names = {s.name for s in shards}
    other = sorted(
        d.name
        for d in shards_root.iterdir()
        if d.is_dir() and not d.name.startswith(".") and d.name not in names
    )
    skipped_input: list[dict] = []
    for s in shards:
        meta = json.loads((shard_dir(work_dir, s) / "funnel.json").read_text(encoding="utf-8"))
        skipped_input += meta.get("skipped", [])
    agg = aggregate(work_dir, out_dir, sorted(names), cfg)
    warnings = run_warnings(agg["funnel"], cfg, skipped_input)
    if warnings:
        with open(out_dir / "funnel.md", "a", encoding="utf-8") as fh:
            fh.write("\n## WARNINGS\n\n" + "".join(f"- {w}\n" for w in warnings))
    return {
        "shards": len(shards),
        "processed": sum(1 for r in results if r.get("status") == "done"),
        "skipped": len(shards) - len(pending) + sum(1 for r in results if r.get("status") == "skipped"),
        "stale_shards": len(other),
        "pairs": agg["pairs"],
        "shard_seconds": elapsed,
        "funnel": agg["funnel"],
        "config_fingerprint": fingerprint,
        "skipped_input": skipped_input,
        "warnings": warnings,
    }
