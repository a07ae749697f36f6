"""Learning-rate schedule: linear warm-up, then linear decay to zero.

Unlike ``transformers.get_linear_schedule_with_warmup``, the first optimiser step already uses a non-zero
learning rate (``1 / warmup_steps`` of the peak) and the last one a non-zero rate too. That matters for the
short, compute-matched runs of the quality grid where a batch of 512 gets only a handful of steps and a
step spent at learning rate 0 would be a step thrown away.
"""

from __future__ import annotations

import math

import torch

from hardbatch.errors import ConfigError

__all__ = ["warmup_linear_schedule", "warmup_steps_for"]


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    """Number of warm-up steps: ``ceil(total_steps * warmup_ratio)``, at most ``total_steps``."""
    if not 0.0 <= warmup_ratio <= 1.0:
        raise ConfigError(f"warmup_ratio must be in [0, 1], got {warmup_ratio}")
    return min(total_steps, math.ceil(total_steps * warmup_ratio))


def warmup_linear_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` whose factor for 0-based step ``s`` is ``(s+1)/warmup`` during warm-up, then decays.

    After warm-up the factor falls linearly, reaching ``1/(total-warmup)`` at the last step (never 0
    within the run). Time and memory are O(1) per step.

    Args:
        optimizer: the optimiser whose parameter groups carry the peak learning rate.
        total_steps: optimiser steps of the whole run (>= 1).
        warmup_steps: steps of linear warm-up (0 <= warmup_steps <= total_steps).

    Returns:
        The scheduler; call ``scheduler.step()`` after every ``optimizer.step()``.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = warmup_linear_schedule(opt, total_steps=4, warmup_steps=2)
        >>> lrs = []
        >>> for _ in range(4):
        ...     lrs.append(opt.param_groups[0]["lr"]); opt.step(); sched.step()
        >>> lrs
        [0.5, 1.0, 1.0, 0.5]
    """
    if total_steps < 1:
        raise ConfigError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ConfigError(f"warmup_steps must be in [0, {total_steps}], got {warmup_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        remaining = total_steps - warmup_steps
        if remaining <= 0:
            return 1.0
        return max(0.0, (total_steps - step) / remaining)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
