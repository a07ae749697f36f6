"""The torch.distributed helpers every layer shares: world info, rank-0 broadcast, "rank 0 first", the ring.

All of them are no-ops on a single process (no initialised default group), so library code calls them
unconditionally. Objects travel with ``torch.distributed.broadcast_object_list`` between our own ranks;
nothing here reads a file.

**The ring** (:class:`Ring`, :func:`circulate`): blocks of rows travel rank → rank + 1 with P2P sends
(``torch.distributed.batch_isend_irecv``), so no rank ever holds more than two of them (the one it computes
on and the one arriving) while every rank meets every block once; at step s rank r holds the block of rank
``(r − s) mod W``, and the send of the next block overlaps the computation on the current one. A *carry*
(a partial result of a block, e.g. a column log-sum-exp or a key gradient) can travel with the blocks and
arrives back at the block's owner complete. The distributed losses (:mod:`hardbatch.losses.ring`) and
B3 / GCBS mining with ``exchange="ring"`` (:mod:`hardbatch.mining.distributed`) use it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from hardbatch import errors

__all__ = [
    "Ring",
    "broadcast_from_rank0",
    "circulate",
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


class Ring:
    """Neighbours of this rank in ``group`` and a non-blocking exchange with them.

    Args:
        group: a process group; ``None``, ``True`` or ``dist.group.WORLD``: the default group.
    """

    def __init__(self, group: Any = None) -> None:
        self.group = None if group is True else group
        self.world = dist.get_world_size(self.group)
        self.rank = dist.get_rank(self.group)
        group_for_lookup = self.group if self.group is not None else dist.group.WORLD
        # P2P peers are global ranks, also inside a subgroup.
        self.next_peer = dist.get_global_rank(group_for_lookup, (self.rank + 1) % self.world)
        self.prev_peer = dist.get_global_rank(group_for_lookup, (self.rank - 1) % self.world)

    def source(self, step: int) -> int:
        """Group rank whose block this rank holds at ``step``."""
        return (self.rank - step) % self.world

    def exchange(self, send: Sequence[torch.Tensor], recv: Sequence[torch.Tensor], tag: int) -> list[Any]:
        """Post sends of ``send`` to the next rank and receives into ``recv`` from the previous one."""
        ops = [dist.P2POp(dist.isend, t, self.next_peer, self.group, tag + i) for i, t in enumerate(send)] + [
            dist.P2POp(dist.irecv, t, self.prev_peer, self.group, tag + i) for i, t in enumerate(recv)
        ]
        return dist.batch_isend_irecv(ops)


def _wait(works: list[Any] | None) -> None:
    for work in works or ():
        work.wait()


def _like(template: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.empty((rows, *template.shape[1:]), dtype=template.dtype, device=template.device)


def circulate(
    ring: Ring,
    rows: Sequence[int],
    blocks: Sequence[torch.Tensor | None],
    compute: Callable[[int, list[torch.Tensor | None]], torch.Tensor | None],
    merge: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor | None:
    """Pass this rank's ``blocks`` around the ring, calling ``compute`` on every rank's blocks once.

    Args:
        ring: the ring of the process group.
        rows: number of rows of every rank's blocks, indexed by group rank.
        blocks: this rank's row-aligned tensors (e.g. keys (n, d), key ids (n,)); ``None`` entries stay
            ``None`` on every rank.
        compute: ``compute(step, blocks_of_source)``; step 0 is the rank's own blocks. Returns this rank's
            contribution to the carry of that block (or None without ``merge``).
        merge: ``merge(carry_received, contribution)`` → the carry sent on (may overwrite the contribution,
            e.g. :func:`add_into`); None: nothing is carried.

    Returns:
        With ``merge``: the complete carry of this rank's own blocks (merged on all W ranks); else None.
    """
    present = [i for i, block in enumerate(blocks) if block is not None]
    current: list[torch.Tensor | None] = [None if b is None else b.contiguous() for b in blocks]
    carry_tag = len(blocks)
    carry_works: list[Any] | None = None
    carry_in: torch.Tensor | None = None
    carry_out: torch.Tensor | None = None  # kept referenced until its send completes
    for step in range(ring.world):
        block_works, incoming = None, None
        if step < ring.world - 1:
            next_rows = rows[ring.source(step + 1)]
            incoming = list(current)
            for i in present:
                incoming[i] = _like(current[i], next_rows)
            block_works = ring.exchange([current[i] for i in present], [incoming[i] for i in present], 0)
        contribution = compute(step, current)
        if merge is not None:
            assert contribution is not None, "compute must return a carry contribution when merge is set"
            if step > 0:
                _wait(carry_works)
                contribution = merge(carry_in, contribution)
            carry_out = contribution.contiguous()
            carry_in = _like(carry_out, rows[ring.source(step + 1)])
            carry_works = ring.exchange([carry_out], [carry_in], carry_tag)
        _wait(block_works)
        if incoming is not None:
            current = incoming
    if merge is None:
        return None
    _wait(carry_works)
    return carry_in
