"""torchrun: which process this is, and the barriers between them.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without it the run is one
process (rank 0 of 1). The process group uses NCCL when each rank has a GPU, gloo otherwise
(CPU); only barriers travel through it: each rank explains its own chunks and writes its own
shards, and rank 0 writes the index once all are done.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["Ranks", "ranks", "barrier", "shutdown", "my_chunks"]


@dataclass(frozen=True)
class Ranks:
    """This process's place among the run's processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        """Whether this process writes the manifest and the index."""
        return self.rank == 0


def ranks(device: str | None = None) -> Ranks:
    """Read torchrun's environment and join the process group if there are several ranks."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1:
        return Ranks()
    import torch.distributed as dist

    here = False
    if not dist.is_initialized():
        gpu = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
        if gpu:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if gpu else "gloo")
        here = True
    return Ranks(rank, world, local_rank, here)


def barrier(where: Ranks) -> None:
    """Wait for every rank (nothing to do with one process)."""
    if where.world > 1:
        import torch.distributed as dist

        dist.barrier()


def shutdown(where: Ranks) -> None:
    """Leave the process group if this run joined it."""
    if where.initialised_here:
        import torch.distributed as dist

        dist.destroy_process_group()


def my_chunks(chunks: int, where: Ranks) -> list[int]:
    """The chunks this rank explains: every ``world``-th, starting at its rank, so that the
    ranks' chunks are disjoint and together are all of them, for any world size."""
    return list(range(where.rank, chunks, where.world))
