"""Small helpers for multi-process training launched by ``torchrun``.

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (plus the rendezvous address) in
every process's environment; a plain ``python train.py`` sets none of them and runs as the
single rank 0 of a world of one, where every helper here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from .errors import EXIT_USAGE, FerplusError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: its global rank, its rank on this machine, and how many there are."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """True on the one process that writes logs, checkpoints and plots."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def launched_world_size() -> int:
    """The world size ``torchrun`` announced in the environment (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched with more than one process, else do nothing.

    The backend is NCCL for CUDA and gloo for CPU. On CUDA each process uses the GPU of its
    ``LOCAL_RANK``, set before the group starts so that NCCL binds to the right device.
    """
    world_size = launched_world_size()
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise FerplusError(
                f"process {local_rank} on this machine has no GPU of its own "
                f"({torch.cuda.device_count()} visible); start at most that many per node"
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size)


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place and return it (unchanged in a single process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), so all evaluate one model.

    DistributedDataParallel syncs buffers at the start of each forward pass, so after an epoch's
    last step every rank holds the statistics of its own last minibatch.
    """
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def raise_on_every_rank(error: Optional[Exception]) -> None:
    """Raise rank 0's ``error`` on every rank (the other ranks pass None), or return on all of them.

    For checks only rank 0 makes: a rank that raised alone would leave the others waiting for it
    in their next collective call. Other ranks raise a :class:`FerplusError` with its message.
    """
    if is_distributed():
        shared = [None if error is None else (str(error), getattr(error, "exit_code", EXIT_USAGE))]
        dist.broadcast_object_list(shared, src=0)
        if error is None and shared[0] is not None:
            raise FerplusError(*shared[0])
    if error is not None:
        raise error


def barrier() -> None:
    """Wait until every rank arrives here (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise maximum of ``tensor`` over all ranks, in place (unchanged in a single process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_gather_objects(value: object) -> list:
    """Every rank's ``value`` (picklable), in rank order; ``[value]`` in a single process."""
    if not is_distributed():
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered
