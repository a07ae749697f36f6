"""Ring communication for the distributed losses: key blocks travel rank → rank + 1 with P2P sends.

With ``distributed="ring"`` no rank ever holds more than two key blocks (the one it computes on and the
one arriving), instead of all W blocks of the all-gather path. At step s rank r holds the block of rank
``(r − s) mod W``; the send of that block to rank r + 1 (``torch.distributed.batch_isend_irecv``) runs
while rank r computes its tiles against it, so communication overlaps computation. A *carry* (a partial
column log-sum-exp in the forward, a partial key gradient in the backward) can travel with the blocks:
each rank merges its contribution into the carry it received and sends it on; after W hops the carry is
back at the block's owner, complete. The carry of step s is in flight during the computation of step
s + 1.

Per-rank memory: own inputs + 2 key blocks (+ ids, + carried vectors) + at most 3 carries (this rank's
contribution, the one arriving, the one departing) = O((b + n_max)·d), independent of W. Communication per rank and pass: (W − 1) key blocks (input dtype) + W carries
(fp32), the same volume as all-gather + reduce-scatter, spread over W steps.

Local sizes may differ between ranks (the sizes are exchanged once, O(W) integers); the feature
dimension, dtypes and the presence of ids must agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from hardbatch.errors import ConfigError
from hardbatch.losses.distributed import _all_gather_into, _resolve, group_world_size

__all__ = [
    "DISTRIBUTED_MODES",
    "GATHER_MAX_BYTES",
    "DistributedPlan",
    "Ring",
    "add_into",
    "circulate",
    "logaddexp_into",
    "plan_call",
    "plan_distributed",
    "shard_table",
]

DISTRIBUTED_MODES = ("auto", "gather", "ring")
# distributed="auto" keeps the all-gather while its extra memory per rank, W·n·d·(itemsize + 4) bytes
# (gathered keys in the input dtype + the fp32 key-gradient buffer), stays under this; past it, the ring.
GATHER_MAX_BYTES = 1 << 30


def shard_table(group: Any, sizes: dict[str, int], device: torch.device) -> list[list[int]]:
    """All ranks' ``sizes`` values, one row per rank in group order (one small all-gather)."""
    group = _resolve(group)
    world = dist.get_world_size(group)
    local = torch.tensor(list(sizes.values()), dtype=torch.int64, device=device)
    gathered = torch.empty(world * local.numel(), dtype=torch.int64, device=device)
    _all_gather_into(gathered, local, group)
    return gathered.view(world, -1).tolist()


def check_agree(table: list[list[int]], names: Sequence[str], columns: Sequence[int]) -> None:
    """Raise :class:`ConfigError` (on every rank alike) unless the given columns agree across ranks."""
    for column in columns:
        values = [row[column] for row in table]
        if any(v != values[0] for v in values):
            per_rank = "; ".join(f"rank {r}: {v}" for r, v in enumerate(values))
            raise ConfigError(
                f"distributed loss needs the same {names[column]} on every rank; got {per_rank}"
            )


@dataclass(frozen=True)
class DistributedPlan:
    """How a distributed loss call runs: ``mode`` (gather | ring), world size, rank, keys per rank."""

    mode: str
    world: int
    rank: int
    key_rows: tuple[int, ...]


def plan_distributed(
    group: Any,
    mode: str,
    queries: int,
    keys: int,
    dim: int,
    has_ids: bool,
    itemsize: int,
    device: torch.device,
) -> DistributedPlan:
    """Exchange the shard sizes once and pick the mode (``auto``: see :data:`GATHER_MAX_BYTES`).

    Raises:
        ConfigError: unknown mode; different dims or id usage across ranks; unequal shards with ``gather``.
    """
    if mode not in DISTRIBUTED_MODES:
        raise ConfigError(f"distributed: expected one of {DISTRIBUTED_MODES}, got {mode!r}")
    group = _resolve(group)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    names = ("queries", "keys", "dim", "ids")
    table = shard_table(group, dict(zip(names, (queries, keys, dim, int(has_ids)))), device)
    check_agree(table, names, (2, 3))
    equal = all(row == table[0] for row in table)
    if mode == "gather" and not equal:
        per_rank = "; ".join(f"rank {r}: {tuple(row[:2])}" for r, row in enumerate(table))
        raise ConfigError(
            f"distributed='gather' needs equal-size shards on every rank (queries, keys); got {per_rank}. "
            "Use drop_last / equal per-device batch sizes, or distributed='ring'"
        )
    if mode == "auto":
        gathered_bytes = world * max(row[1] for row in table) * dim * (itemsize + 4)
        mode = "gather" if equal and gathered_bytes <= GATHER_MAX_BYTES else "ring"
    return DistributedPlan(mode, world, rank, tuple(row[1] for row in table))


def plan_call(
    group: Any, mode: str, query: torch.Tensor, key: torch.Tensor, has_ids: bool
) -> DistributedPlan:
    """The plan of one loss call: :func:`plan_distributed` under a group of W > 1 ranks, else ``local``.

    Raises:
        ConfigError: as :func:`plan_distributed`; an unknown mode also without a group.
    """
    if group is not None and group_world_size(group) > 1:
        return plan_distributed(
            group,
            mode,
            query.shape[0],
            key.shape[0],
            query.shape[1],
            has_ids,
            key.element_size(),
            query.device,
        )
    if mode not in DISTRIBUTED_MODES:
        raise ConfigError(f"distributed: expected one of {DISTRIBUTED_MODES}, got {mode!r}")
    return DistributedPlan("local", 1, 0, (key.shape[0],))


class Ring:
    """Neighbours of this rank in ``group`` and a non-blocking exchange with them.

    Args:
        group: a process group, ``True`` or ``dist.group.WORLD``.
    """

    def __init__(self, group: Any) -> None:
        self.group = _resolve(group)
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


def add_into(received: torch.Tensor, contribution: torch.Tensor) -> torch.Tensor:
    """Carry merge for sums (key gradients): adds in place into this rank's fresh contribution."""
    return contribution.add_(received)


def logaddexp_into(received: torch.Tensor, contribution: torch.Tensor) -> torch.Tensor:
    """Carry merge for log-sum-exps (column LSE), in place into this rank's fresh contribution."""
    return torch.logaddexp(received, contribution, out=contribution)


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
