"""The torch.distributed helpers every layer shares: world info, rank-0 broadcast, "rank 0 first".

All of them are no-ops on a single process (no initialised default group), so library code calls them
unconditionally. Objects travel with ``torch.distributed.broadcast_object_list`` between our own ranks;
nothing here reads a file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from hardbatch import errors

__all__ = [
    "broadcast_from_rank0",
    "comm_device",
    "is_distributed",
    "raise_together",
    "rank",
    "rank0_computes",
    "rank0_first",
    "world_size",
]

T = TypeVar("T")


def is_distributed() -> bool:
    """An initialised default process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """World size of the initialised default process group, or 1."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """Rank in the initialised default process group, or 0."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def comm_device() -> torch.device:
    """Where the default group's tensors must live: this rank's CUDA device under NCCL, else the CPU (gloo)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_from_rank0(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (``obj`` itself on one process).

    Every rank must call it (a collective); the other ranks' ``obj`` is ignored.
    """
    if not is_distributed():
        return obj
    box = [obj if rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


def rank0_computes(compute: Callable[[], T]) -> T:
    """Run ``compute`` on rank 0 only and give its result to every rank.

    For results that must be identical everywhere (a mined plan, GCBS batches) although floating-point
    results may differ between ranks.
    """
    if not is_distributed():
        return compute()
    return broadcast_from_rank0(compute() if rank() == 0 else None)  # type: ignore[arg-type]


@contextlib.contextmanager
def rank0_first() -> Iterator[None]:
    """Run the block on rank 0, then on the other ranks (e.g. rank 0 fills a cache the others read).

    Example:
        >>> with rank0_first():
        ...     pass
    """
    main = rank() == 0
    if not main and is_distributed():
        dist.barrier()
    yield
    if main and is_distributed():
        dist.barrier()


def raise_together(failure: BaseException | None, what: str) -> None:
    """A collective: raise on every rank when any rank failed, instead of leaving the others waiting.

    Every rank calls it at the same point with its own failure (None when it succeeded). The failing rank
    raises its own exception; the others raise the first failure as the nearest
    :class:`~hardbatch.errors.HardbatchError` class of :mod:`hardbatch.errors` among its bases (a user
    error: same message; a ``DenseGraphError`` arrives as the ``ConfigError`` it is), else as a
    RuntimeError naming the rank and ``what`` it was doing. Only class names and messages travel
    (``all_gather_object`` between our own ranks). On one process it just raises ``failure``, if any.

    Example:
        >>> raise_together(None, "mining")
    """
    if not is_distributed():
        if failure is not None:
            raise failure
        return
    report = None if failure is None else ([c.__name__ for c in type(failure).__mro__], str(failure))
    reports: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(reports, report)
    if failure is not None:
        raise failure
    for where, report in enumerate(reports):
        if report is not None:
            names, message = report
            for name in names:
                error = getattr(errors, name, None)
                if isinstance(error, type) and issubclass(error, errors.HardbatchError):
                    raise error(message)
            raise RuntimeError(f"rank {where} failed while {what}: {names[0]}: {message}")
