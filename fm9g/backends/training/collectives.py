"""How the ranks of a run talk to each other: one interface, one implementation per communicator.

The loop and the checkpoint writer only sum tensors, gather small integers and objects, and wait
for each other. :class:`TorchDistributed` does that over ``torch.distributed`` (the torch backend,
and any single process); the bmtrain backend implements the same :class:`Collectives` over
BMTrain's own NCCL communicator, which never initializes ``torch.distributed``.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import torch
import torch.distributed as dist


class Collectives(Protocol):
    """Rank, world size and device of this process, and the collectives the run sequence uses."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes logs and assembles checkpoints."""

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over ranks (may reuse ``tensor``)."""

    def all_gather_ints(self, values: list[int]) -> list[list[int]]:
        """Every rank's ``values`` (all ranks pass lists of one length), in rank order."""

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's picklable ``obj``, in rank order (RNG and stream states at a checkpoint)."""

    def barrier(self) -> None:
        """Wait until every rank got here."""

    def close(self) -> None:
        """Release the communicator at the end of the run."""


class TorchDistributed:
    """``torch.distributed`` under torchrun (gloo on CPU, NCCL on GPUs); a single process without it."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            self.device = torch.device("cuda", local_rank)
        else:
            self.device = torch.device("cpu")
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(tensor)
        return tensor

    def all_gather_ints(self, values: list[int]) -> list[list[int]]:
        if self.world_size == 1:
            return [list(values)]
        local = torch.tensor(values, dtype=torch.int64, device=self.device)
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local)
        return [t.tolist() for t in gathered]

    def gather_objects(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()
