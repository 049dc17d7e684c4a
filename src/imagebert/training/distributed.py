"""One entry point for single-process, `torchrun` multi-process and multi-node runs.

`torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK (and the rendezvous variables); a plain `python -m imagebert` run has
none of them and trains in one process without initialising torch.distributed at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
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
    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        if info.backend == "nccl":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def all_gather_object(info: DistInfo, obj: Any) -> list[Any]:
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(info: DistInfo, tensor: torch.Tensor) -> torch.Tensor:
    """Sum a small tensor over ranks (in place on a copy on the process-group's device)."""
    if not info.distributed:
        return tensor
    t = tensor.detach().to(info.device if info.backend == "nccl" else "cpu", torch.float64).clone()
    dist.all_reduce(t)
    return t.cpu()


def broadcast_object(info: DistInfo, obj: Any, src: int = 0) -> Any:
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
