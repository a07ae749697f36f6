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

**Shared steps** (:class:`WorkSplit`): a computation that every rank runs with the same inputs (e.g. the
set-up of a grouped IVF search) hands its row-parallel steps to a ``WorkSplit``: each block of rows is
computed on one rank and every rank receives all of them, in block order; steps that must run once run on
rank 0 and are broadcast. Alone (the default) it just runs them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from hardbatch import errors

__all__ = [
    "Ring",
    "WorkSplit",
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


def raise_together(failure: BaseException | None, what: str, payload: Any = None) -> list[Any]:
    """A collective: raise on every rank when any rank failed, instead of leaving the others waiting.

    Every rank calls it at the same point with its own failure (None when it succeeded). The failing rank
    raises its own exception; the others raise the first failure as the nearest
    :class:`~hardbatch.errors.HardbatchError` class of :mod:`hardbatch.errors` among its bases (a user
    error: same message; a ``DenseGraphError`` arrives as the ``ConfigError`` it is), else as a
    RuntimeError naming the rank and ``what`` it was doing. Only class names and messages travel
    (``all_gather_object`` between our own ranks). On one process it just raises ``failure``, if any.

    ``payload`` (a small picklable object, e.g. the shape of what a rank is about to send) travels in the
    same collective, so a step that needs both the outcome and such metadata costs one round trip.

    Returns:
        Every rank's ``payload`` in rank order (``[payload]`` on one process), when no rank failed.

    Example:
        >>> raise_together(None, "mining", payload=3)
        [3]
    """
    if not is_distributed():
        if failure is not None:
            raise failure
        return [payload]
    report = None if failure is None else ([c.__name__ for c in type(failure).__mro__], str(failure))
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (report, payload))
    if failure is not None:
        raise failure
    for where, (report, _) in enumerate(gathered):
        if report is not None:
            names, message = report
            for name in names:
                error = getattr(errors, name, None)
                if isinstance(error, type) and issubclass(error, errors.HardbatchError):
                    raise error(message)
            raise RuntimeError(f"rank {where} failed while {what}: {names[0]}: {message}")
    return [sent for _, sent in gathered]


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


class WorkSplit:
    """The steps of a computation that every rank runs together: row blocks dealt to the ranks, or rank 0 alone.

    ``WorkSplit()`` runs every step here (a single process, or a rank computing alone). With
    ``across_ranks=True`` the ranks of the default group share the steps: every rank must make the same
    calls in the same order (the same inputs' shapes and options, so the same control flow), and each step
    ends with every rank holding the same result.

    Every step starts with a :func:`raise_together` report, so a rank that failed, in a step or between two,
    makes every rank raise at the next step; :meth:`finish` is the last report (a failure after the last
    step). Cost: :meth:`blocks` is two collectives (the report, carrying each rank's share shape, then one
    ``all_gather`` of the results, padded to the longest share); :meth:`once` two (the report, then rank 0's
    result pickled to every rank).

    Args:
        what: what the ranks are doing, for the error of a failed rank ("building the IVF layout").
        across_ranks: share the steps over the default group's ranks (needs an initialised group).

    Example:
        >>> import numpy as np
        >>> WorkSplit().blocks(lambda lo, hi: np.arange(lo, hi) * 2, 5, 2).tolist()
        [0, 2, 4, 6, 8]
    """

    def __init__(self, what: str = "computing", *, across_ranks: bool = False) -> None:
        self.what = what
        self.shared = across_ranks and is_distributed()
        self.reported = False

    def owners(self, count: int, block: int) -> np.ndarray:
        """(blocks,) int64: the rank that computes each block of ``block`` items (contiguous runs by rank)."""
        num_blocks = -(-count // block)
        world = dist.get_world_size() if self.shared else 1
        return np.arange(num_blocks, dtype=np.int64) * world // max(num_blocks, 1)

    def blocks(self, work: Callable[[int, int], np.ndarray], count: int, block: int) -> np.ndarray:
        """``work(lo, hi)`` for the blocks [lo, hi) of ``range(count)``, concatenated in block order.

        Args:
            work: returns a (hi - lo, ...) array, the same trailing shape and dtype for every block. Each
                block runs on one rank, always the same one for a given ``(count, block)``
                (:meth:`owners`), so ``work`` may keep per-block state from one step to the next.
            count: items to cover (rows, groups...).
            block: items per block. The blocks are the same for every world size, so a result that
                depends on how its rows are blocked (a matmul kernel chosen by size) does not depend on it.

        Returns:
            (count, ...) array, on every rank.
        """
        bounds = [(lo, min(lo + block, count)) for lo in range(0, count, block)]
        if not self.shared:
            return _concatenate([work(lo, hi) for lo, hi in bounds])
        me = dist.get_rank()
        mine = [bound for bound, owner in zip(bounds, self.owners(count, block)) if owner == me]
        part, failure = None, None
        try:
            part = _concatenate([work(lo, hi) for lo, hi in mine]) if mine else None
        except Exception as exc:  # every rank must hear of it before the results travel
            failure = exc
        meta = None if part is None else (len(part), part.shape[1:], part.dtype.str)
        return _all_gather_rows(part, self.report(failure, meta))

    def once(self, work: Callable[[], T]) -> T:
        """``work()`` on rank 0, its result on every rank (for results whose bits must be one rank's)."""
        if not self.shared:
            return work()
        result, failure = None, None
        if dist.get_rank() == 0:
            try:
                result = work()
            except Exception as exc:
                failure = exc
        self.report(failure)
        return broadcast_from_rank0(result)  # type: ignore[return-value]

    def report(self, failure: BaseException | None, payload: Any = None) -> list[Any]:
        """A :func:`raise_together` step (every rank's ``payload`` back, in rank order); a failure it raises
        is marked as reported (see :meth:`finish`)."""
        if not self.shared:
            if failure is not None:
                raise failure
            return [payload]
        try:
            return raise_together(failure, self.what, payload)
        except BaseException:
            self.reported = True
            raise

    def finish(self, failure: BaseException | None) -> None:
        """The last report of the computation, with its outcome on this rank (None: it succeeded).

        A failure raised by a step was reported there (every rank raised it): it is raised again without
        another collective. Any other failure (between steps or after the last) joins the next step the
        other ranks make, or this last report, so every rank raises.
        """
        if failure is not None and self.reported:
            raise failure
        self.report(failure)


def _concatenate(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0)


def _all_gather_rows(part: np.ndarray | None, metas: list[Any]) -> np.ndarray:
    """Every rank's rows (None: no rows) concatenated in rank order, on every rank; ``metas`` holds every
    rank's ``(rows, trailing shape, dtype)`` (None: no rows), gathered beforehand."""
    shown = [meta for meta in metas if meta is not None]
    if not shown:
        return np.empty(0)
    _, tail, dtype = shown[0]
    assert all(meta[1:] == (tail, dtype) for meta in shown), f"blocks of other shapes or dtypes: {metas}"
    lengths = [0 if meta is None else meta[0] for meta in metas]
    template = torch.from_numpy(np.empty((max(lengths), *tail), dtype=np.dtype(dtype)))
    padded = torch.zeros_like(template, device=comm_device())
    if part is not None:
        padded[: len(part)] = torch.from_numpy(np.ascontiguousarray(part)).to(padded.device)
    received = [torch.empty_like(padded) for _ in lengths]
    dist.all_gather(received, padded)
    return np.concatenate([got[:length].cpu().numpy() for got, length in zip(received, lengths)])
