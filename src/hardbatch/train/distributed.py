"""Process-group set-up for data-parallel training (``torchrun``).

``torchrun --nproc-per-node P -m hardbatch train ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`init_distributed` turns them into an initialised default group (gloo on CPU, NCCL on CUDA) and a
:class:`DistContext` that the trainer passes around explicitly, so nothing below reads global state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from hardbatch.distributed import broadcast_from_rank0

__all__ = ["DistContext", "init_distributed"]


@dataclass
class DistContext:
    """Where this process sits in the data-parallel world.

    Attributes:
        rank: global rank (0 writes files and evaluates).
        world_size: number of processes; 1 means no process group.
        local_rank: rank on this node (selects the CUDA device).
        device: the device this rank trains on.
        owns_group: whether :func:`init_distributed` created the group (and so must destroy it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def group(self) -> Any:
        """The process group for collectives (``None`` when not distributed)."""
        return dist.group.WORLD if self.enabled else None

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, value: float) -> float:
        """Average a Python float over ranks (identity on one process)."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        return broadcast_from_rank0(obj) if self.enabled else obj

    def _collective_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str | torch.device = "auto") -> DistContext:
    """Join the process group described by torchrun's environment variables, if any.

    Uses NCCL when CUDA is used, gloo otherwise. Without ``WORLD_SIZE`` > 1 in the environment (and no
    group already initialised) this returns a single-process context and creates nothing.

    Args:
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``; with CUDA each rank takes
            ``cuda:LOCAL_RANK``.

    Returns:
        The :class:`DistContext` of this process.

    Example:
        >>> ctx = init_distributed("cpu")
        >>> (ctx.rank, ctx.world_size)
        (0, 1)
    """
    from hardbatch.device import resolve_device

    base = resolve_device(device)
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return DistContext(rank, world, local, _rank_device(base, local), owns_group=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=base)
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    rank_device = _rank_device(base, local)
    if rank_device.type == "cuda":
        torch.cuda.set_device(rank_device)
    dist.init_process_group(backend="nccl" if rank_device.type == "cuda" else "gloo")
    return DistContext(rank, world, local, rank_device, owns_group=True)


def _rank_device(base: torch.device, local_rank: int) -> torch.device:
    if base.type == "cuda" and base.index is None:
        return torch.device("cuda", local_rank)
    return base
