"""torch.distributed plumbing for the InfoNCE loss: shard checks, gathers, LSE merge, gradient reductions.

All collectives move O((b + n)·d) data per step (keys and their gradients) or O(n) (LSE vectors); the
b × n logits never travel. Every function here is a no-op-free thin wrapper: callers only use them when
the group has more than one rank.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from hardbatch.errors import ConfigError

__all__ = [
    "GatherWithGrad",
    "MeanGradAcrossRanks",
    "all_gather_rows",
    "all_reduce_lse",
    "check_equal_shards",
    "gather_keys",
    "group_rank",
    "group_world_size",
    "mean_over_ranks",
    "reduce_scatter_rows",
]


def _resolve(group: Any) -> Any:
    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError(
            "info_nce(group=...) needs an initialised torch.distributed process group "
            "(call torch.distributed.init_process_group first), or pass group=None for one process"
        )
    return None if group is True else group


def group_world_size(group: Any) -> int:
    """Number of ranks in ``group`` (``True`` means the default world group)."""
    return dist.get_world_size(_resolve(group))


def group_rank(group: Any) -> int:
    """Rank of this process inside ``group``."""
    return dist.get_rank(_resolve(group))


def check_equal_shards(group: Any, sizes: dict[str, int], device: torch.device) -> None:
    """Raise :class:`ConfigError` on every rank unless all ranks pass identically shaped shards.

    The gathers below need equal shapes; a mismatch would otherwise hang or crash deep inside NCCL/gloo.
    """
    group = _resolve(group)
    world = dist.get_world_size(group)
    local = torch.tensor(list(sizes.values()), dtype=torch.int64, device=device)
    gathered = torch.empty(world * local.numel(), dtype=torch.int64, device=device)
    _all_gather_into(gathered, local, group)
    table = gathered.view(world, -1).tolist()
    if any(row != table[0] for row in table):
        names = ", ".join(sizes)
        per_rank = "; ".join(f"rank {r}: {tuple(row)}" for r, row in enumerate(table))
        raise ConfigError(
            f"distributed info_nce needs equal-size shards on every rank ({names}); got {per_rank}. "
            "Use drop_last / equal per-device batch sizes"
        )


def _all_gather_into(output: torch.Tensor, local: torch.Tensor, group: Any) -> None:
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(output, local.contiguous(), group=group)


def all_gather_rows(local: torch.Tensor, group: Any) -> torch.Tensor:
    """Concatenate every rank's ``local`` (m, ...) along dim 0 in rank order → (world·m, ...). No autograd."""
    group = _resolve(group)
    world = dist.get_world_size(group)
    output = torch.empty((world * local.shape[0], *local.shape[1:]), dtype=local.dtype, device=local.device)
    _all_gather_into(output, local, group)
    return output


def reduce_scatter_rows(full: torch.Tensor, group: Any) -> torch.Tensor:
    """Sum ``full`` (world·m, ...) over ranks and return this rank's (m, ...) slice."""
    group = _resolve(group)
    world = dist.get_world_size(group)
    output = torch.empty((full.shape[0] // world, *full.shape[1:]), dtype=full.dtype, device=full.device)
    scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    scatter(output, full.contiguous(), op=dist.ReduceOp.SUM, group=group)
    return output


def all_reduce_lse(partial_lse: torch.Tensor, group: Any) -> torch.Tensor:
    """Merge per-rank partial log-sum-exps into the global one: max all-reduce, then sum of exp."""
    group = _resolve(group)
    shift = partial_lse.clone()
    dist.all_reduce(shift, op=dist.ReduceOp.MAX, group=group)
    # A column masked on every rank stays -inf instead of becoming NaN.
    shift = shift.clamp(min=torch.finfo(shift.dtype).min)
    total = torch.exp(partial_lse - shift)
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return total.log_().add_(shift)


class GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward reduce-scatters (sums) the gradient back to its owner.

    Used by the materialising reference loss (OpenCLIP's gather-with-grad pattern).
    """

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        return all_gather_rows(local, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return reduce_scatter_rows(grad, ctx.group), None


class MeanGradAcrossRanks(torch.autograd.Function):
    """Identity in forward; backward replaces the gradient by its mean over ranks.

    Applied to a shared scalar (the logit scale) so that every rank holds the gradient of the
    DDP objective (1/W)·Σ_r L_r, whether or not DDP later averages it again.
    """

    @staticmethod
    def forward(ctx: Any, value: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        return value.view_as(value)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        group = _resolve(ctx.group)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=group)
        return grad / dist.get_world_size(group), None


def gather_keys(
    key: torch.Tensor, key_ids: torch.Tensor | None, labels: torch.Tensor, group: Any, rank: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """All ranks' keys (W·n, d) and key ids, and this rank's labels shifted into the gathered keys.

    Equal shards (n keys on every rank) assumed, as for ``distributed="gather"``.
    """
    keys = all_gather_rows(key, group)
    key_ids_all = None if key_ids is None else all_gather_rows(key_ids, group)
    return keys, key_ids_all, labels + rank * key.shape[0]


def mean_over_ranks(value: torch.Tensor, group: Any, world: int) -> torch.Tensor:
    """The mean over the ``world`` ranks of a scalar tensor (e.g. the gradient of a shared scale)."""
    value = value.reshape(1).clone()
    dist.all_reduce(value, group=None if group is True else group)
    return value.reshape(()) / world
