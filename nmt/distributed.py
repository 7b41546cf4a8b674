"""Several training processes with PyTorch's own engine: torch.distributed and DDP.

`torchrun` starts the processes and puts RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous
address in their environment; `join` reads them. Every process builds the same seeded list of
token batches and takes its share of the sentences of each one, so the global batch is the
recipe's `train.batch_tokens` whatever the number of processes. Rank 0 alone prepares the run
directory, writes files, validates and decides when to stop; the others follow its decisions.
Without torchrun, `Cluster()` is a single process and every call here costs nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, TypeVar, cast

import numpy as np
import torch
import torch.distributed as dist

from nmt.device import pick_device
from nmt.errors import NmtError

T = TypeVar("T")


@dataclass(frozen=True)
class Cluster:
    rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # this module started the process group, so it ends it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def share(self, indices: np.ndarray) -> np.ndarray:
        """This process's sentences of a batch (length-sorted, so every share is alike)."""
        return indices[self.rank :: self.world_size]

    def sum(self, value: float) -> float:
        """The sum of `value` over all processes (float64 on the CPU, as gloo and nccl allow)."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
        dist.all_reduce(tensor)
        return float(tensor.item())

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true on any process, on every process (a signal may reach one)."""
        if not self.distributed:
            return flag
        return self.sum(float(flag)) > 0

    def from_main(self, value: T) -> T:
        """Rank 0's `value`, on every process."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, device=_collective_device())
        return box[0]

    def barrier(self) -> None:
        """Wait for every process: a process leaving the group while a message to or from it
        is still under way brings the job down (SIGABRT in gloo)."""
        if self.distributed:
            dist.barrier()

    def main_first(self, work: Callable[[], T]) -> T:
        """Run `work` on rank 0, then on the others (which then find its files made). A user
        error on rank 0 ends every process with the same message instead of a hang."""
        if not self.distributed:
            return work()
        result, error = None, None
        if self.is_main:
            try:
                result = work()
            except NmtError as failure:
                error = str(failure)
        error = self.from_main(error)
        if error is not None:
            self.barrier()  # all have the message before any of them leaves
            raise NmtError(error)
        return cast(T, result) if self.is_main else work()  # rank 0's result, set above


def _collective_device() -> torch.device:
    backend = dist.get_backend()
    return (
        torch.device("cuda", torch.cuda.current_device())
        if backend == "nccl"
        else torch.device("cpu")
    )


def join(device_name: str) -> tuple[Cluster, torch.device]:
    """This process's place among the training processes, and the device it trains on.

    Under torchrun each process takes the GPU of its LOCAL_RANK and talks over nccl; on CPUs,
    over gloo. A process group already started by the caller is used as it is.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 and not dist.is_initialized():
        return Cluster(), pick_device(device_name)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Cluster(dist.get_rank(), dist.get_world_size(), owns), device


def leave(cluster: Cluster) -> None:
    if cluster.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: torch.nn.Module, cluster: Cluster, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `module` when there are several processes."""
    if not cluster.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)
