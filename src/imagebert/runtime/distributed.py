"""The one set of distributed helpers: torchrun set-up, barriers and small collectives.

`torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK (and the rendezvous variables); a plain `python -m imagebert` run has
none of them and works in one process without initialising torch.distributed at all. Two styles of caller share
these helpers: the Trainer passes the `DistInfo` it was given (`barrier(info)`), while the scoring engine, which
is handed no such object, asks the live process group (`current_rank_world()`, `barrier()` with no argument).
Every helper is a no-op in one process, so callers never branch on world size themselves.

Why the collectives keep their tensors (`_HANDED_TO_GLOO`): a gloo worker thread drops its reference to a finished
collective's tensors a moment after `wait()` returns. If Python has let go of them by then, that last drop frees a
Python object and needs the GIL; and if the main thread is at that moment freeing the process group (the DDP
Reducer's dealloc at the end of a run, GIL held), the destructor joins the worker and both wait forever: a run that
wrote its final checkpoint and never exited (docs/training.md, "Exit without a deadlock"). With Python holding a
reference to every tensor of the last collectives, a worker never frees one, so it never needs the GIL.
"""

from __future__ import annotations

import os
import pickle
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "all_gather_object",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "current_rank_world",
    "init_distributed",
    "is_initialized",
    "resolve_device",
    "shutdown",
]


@dataclass
class DistInfo:
    """Where this process sits: rank, world size, its device and the backend it joined with."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


# the tensors of the last collectives, kept so that no gloo worker thread ever holds the last reference (see above);
# a few KB each, bounded; kept to the end of the process
_HANDED_TO_GLOO: deque[torch.Tensor] = deque(maxlen=256)


def _keep(*tensors: torch.Tensor) -> None:
    _HANDED_TO_GLOO.extend(tensors)


def is_initialized() -> bool:
    """Whether a process group is live (False where torch has no distributed support at all)."""
    return dist.is_available() and dist.is_initialized()


def current_rank_world() -> tuple[int, int]:
    """(rank, world size) of the live process group, (0, 1) without one."""
    if is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:LOCAL_RANK when a GPU is there, else cpu; anything else is taken as given."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def init_distributed(device: str = "auto", backend: str | None = None) -> DistInfo:
    """Read the torchrun environment and join the process group (gloo on CPU, NCCL on GPU) when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, None, False)
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, dist.get_backend(), False)
    chosen = backend or ("nccl" if dev.type == "cuda" else "gloo")
    dist.init_process_group(backend=chosen, device_id=dev if chosen == "nccl" else None)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, chosen, True)


def shutdown(info: DistInfo) -> None:
    """Leave the process group, but only one this process joined itself."""
    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo | None = None) -> None:
    """Wait for every rank. Without `info`, on the live process group (if any)."""
    if info is None:
        if is_initialized():
            dist.barrier()
        return
    if info.distributed:
        if info.backend == "nccl":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def _collective_device(info: DistInfo) -> torch.device:
    return info.device if info.backend == "nccl" else torch.device("cpu")


def _object_to_bytes(obj: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A pickled object as a uint8 tensor owning its memory, and its length as a 1-element int64 tensor."""
    payload = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8).clone().to(device)
    return payload, torch.tensor([payload.numel()], dtype=torch.int64, device=device)


def _bytes_to_object(data: torch.Tensor) -> Any:
    return pickle.loads(data.cpu().numpy().tobytes())


def all_gather_object(info: DistInfo, obj: Any) -> list[Any]:
    """One picklable object from every rank, in rank order (our own ranks' objects, never a file's)."""
    if not info.distributed:
        return [obj]
    device = _collective_device(info)
    payload, size = _object_to_bytes(obj, device)
    sizes = [torch.zeros_like(size) for _ in range(info.world_size)]
    dist.all_gather(sizes, size)
    lengths = [int(s) for s in sizes]
    padded = torch.zeros(max(lengths), dtype=torch.uint8, device=device)
    padded[: payload.numel()] = payload
    gathered = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(gathered, padded)
    _keep(payload, size, *sizes, padded, *gathered)
    return [_bytes_to_object(t[:n]) for t, n in zip(gathered, lengths, strict=True)]


def all_reduce_sum(info: DistInfo | None, tensor: torch.Tensor) -> torch.Tensor:
    """Sum a small tensor over ranks (on a float64 copy, on the process group's device); returned on the CPU.

    With `info=None` the live process group is used and the dtype is kept (counts stay integers).
    """
    if info is None:
        if not is_initialized():
            return tensor
        t = tensor.detach().clone()
        dist.all_reduce(t)
        _keep(t)
        return t
    if not info.distributed:
        return tensor
    t = tensor.detach().to(_collective_device(info), torch.float64).clone()
    dist.all_reduce(t)
    _keep(t)
    return t.cpu().clone()


def broadcast_object(info: DistInfo, obj: Any, src: int = 0) -> Any:
    """Rank `src`'s object on every rank."""
    if not info.distributed:
        return obj
    device = _collective_device(info)
    payload, size = _object_to_bytes(obj, device)
    dist.broadcast(size, src=src)
    buffer = payload if info.rank == src else torch.empty(int(size), dtype=torch.uint8, device=device)
    dist.broadcast(buffer, src=src)
    _keep(payload, size, buffer)
    return obj if info.rank == src else _bytes_to_object(buffer)
