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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from hardbatch.distributed import Ring, circulate
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


def add_into(received: torch.Tensor, contribution: torch.Tensor) -> torch.Tensor:
    """Carry merge for sums (key gradients): adds in place into this rank's fresh contribution."""
    return contribution.add_(received)


def logaddexp_into(received: torch.Tensor, contribution: torch.Tensor) -> torch.Tensor:
    """Carry merge for log-sum-exps (column LSE), in place into this rank's fresh contribution."""
    return torch.logaddexp(received, contribution, out=contribution)
