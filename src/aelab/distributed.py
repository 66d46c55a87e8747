"""Several processes through PyTorch's own engine: torchrun sets RANK / LOCAL_RANK / WORLD_SIZE,
we join the process group (gloo on the CPU, nccl on CUDA) and wrap the model in DDP.

Without torchrun everything here is a no-op: rank 0 of 1.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes in the environment (if any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if not info.is_main:                     # only rank 0 prints; errors still show everywhere
        logging.getLogger("aelab").setLevel(logging.WARNING)
    return info


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device, info: DistInfo) -> torch.device:
    """Each process drives the GPU of its local rank."""
    if device.type == "cuda" and info.enabled:
        return torch.device("cuda", info.local_rank)
    return device


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (in place); unchanged in a single process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_objects(obj) -> list:
    """``obj`` of every process in rank order, on every process; [obj] in a single process.
    (torch pickles them between this run's own processes; nothing a user hands in.)"""
    if dist.is_initialized() and dist.get_world_size() > 1:
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shard(n: int, rank: int, world: int) -> slice:
    """The contiguous part of n items that process ``rank`` of ``world`` owns; parts cover all
    items exactly once."""
    return slice(rank * n // world, (rank + 1) * n // world)
