"""One set of distributed helpers: no-ops in one process, real collectives over 2 gloo processes."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from imagebert.runtime import distributed as rd


def test_single_process_helpers_are_no_ops():
    info = rd.init_distributed("cpu")
    assert (info.rank, info.world_size, info.distributed, info.is_main) == (0, 1, False, True)
    assert rd.current_rank_world() == (0, 1)
    t = torch.tensor([1.5])
    assert rd.all_reduce_sum(info, t) is t and rd.all_reduce_sum(None, t) is t
    assert rd.all_gather_object(info, {"a": 1}) == [{"a": 1}]
    assert rd.broadcast_object(info, 7) == 7
    rd.barrier(info)
    rd.barrier()
    rd.shutdown(info)


def test_old_module_paths_re_export_the_same_objects():
    from imagebert.retrieval import engine
    from imagebert.training import distributed as old

    assert old.DistInfo is rd.DistInfo and old.init_distributed is rd.init_distributed
    assert old.all_reduce_sum is rd.all_reduce_sum and old.barrier is rd.barrier
    assert engine._dist_info() == (0, 1)


def _worker(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    info = rd.init_distributed("cpu")
    try:
        summed = rd.all_reduce_sum(info, torch.tensor([rank + 1.0]))
        counts = rd.all_reduce_sum(None, torch.tensor([rank + 1], dtype=torch.int64))  # engine style
        gathered = rd.all_gather_object(info, f"r{rank}")
        value = rd.broadcast_object(info, f"from {rank}")
        rng = torch.get_rng_state()
        kept_before = len(rd._HANDED_TO_GLOO)
        mixed = rd.all_gather_object(
            info, {"rng": rng, "pad": "x" * (1000 * rank)}
        )  # unequal sizes, a tensor
        kept = len(rd._HANDED_TO_GLOO) - kept_before
        uneven = ([len(m["pad"]) for m in mixed], torch.equal(mixed[rank]["rng"], rng), kept)
        rd.barrier(info)
        rd.barrier()
        queue.put(
            (
                rank,
                rd.current_rank_world(),
                float(summed[0]),
                counts.dtype,
                int(counts[0]),
                gathered,
                value,
                uneven,
            )
        )
    finally:
        rd.shutdown(info)


@pytest.mark.slow
def test_two_gloo_processes():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    for rank, (r, rank_world, summed, dtype, count, gathered, value, uneven) in enumerate(results):
        assert r == rank and rank_world == (rank, 2)
        assert summed == 3.0 and dtype == torch.int64 and count == 3
        assert gathered == ["r0", "r1"] and value == "from 0"
        # objects of different sizes come back whole; every tensor handed to gloo is still held by Python
        # (payload, size, 2 sizes, padded, 2 gathered), so no gloo thread frees one (the exit deadlock)
        assert uneven == ([0, 1000], True, 7)
