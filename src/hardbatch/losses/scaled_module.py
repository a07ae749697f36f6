"""``ScaledLossModule``: what :class:`InfoNCELoss` and :class:`SigmoidLoss` share as ``nn.Module`` s.

The argument checks, the logit scale (and SigLIP's bias) as fixed floats or learnable fp32 parameters (the
scale learnt as its log, ``logit_scale``, as in CLIP / SigLIP, so its gradient is exact and it stays
positive), and the forward signature ``(query, key, labels, query_ids, key_ids)``. O(1) memory.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from hardbatch.errors import ConfigError
from hardbatch.losses.inputs import REDUCTIONS

__all__ = ["ScaledLossModule"]


class ScaledLossModule(nn.Module):
    """Base of the loss modules (not a loss by itself): subclasses define :meth:`_loss_fn`.

    Args:
        scale: initial (or fixed) logit scale; must be positive.
        reduction: ``mean`` | ``sum`` | ``none``.
        tile_size: tile of the loss kernel.
        group: process group for distributed training.
        scale_bounds: ``(min_scale, max_scale)`` of a clampable scale, checked to be ordered and positive.

    Raises:
        ConfigError: non-positive ``scale``, bad ``scale_bounds``, unknown ``reduction``.
    """

    def __init__(
        self,
        scale: float,
        reduction: str,
        tile_size: int | tuple[int, int] | None,
        group: Any,
        scale_bounds: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        if not scale > 0:
            raise ConfigError(f"scale must be positive, got {scale}")
        if scale_bounds is not None and not 0 < scale_bounds[0] <= scale_bounds[1]:
            raise ConfigError(f"need 0 < min_scale <= max_scale, got {scale_bounds[0]} and {scale_bounds[1]}")
        if reduction not in REDUCTIONS:
            raise ConfigError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
        self.tile_size = tile_size
        self.group = group
        self.reduction = reduction

    def _init_logits(self, learnable: bool, scale: float, bias: float | None = None) -> None:
        """``logit_scale`` = log(scale) (and ``logit_bias``) parameters, or ``fixed_scale`` (``fixed_bias``)."""
        self._learnable_logits = learnable
        if learnable:
            self.logit_scale = nn.Parameter(torch.tensor(math.log(scale), dtype=torch.float32))
            if bias is not None:
                self.logit_bias = nn.Parameter(torch.tensor(float(bias), dtype=torch.float32))
        else:
            self.fixed_scale = float(scale)
            if bias is not None:
                self.fixed_bias = float(bias)

    @property
    def scale(self) -> float | torch.Tensor:
        """The logit scale used now (a tensor with grad when learnable)."""
        return self.logit_scale.exp() if self._learnable_logits else self.fixed_scale

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        labels: torch.Tensor | None = None,
        query_ids: torch.Tensor | None = None,
        key_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss of ``query`` (b, d) against ``key`` (n, d); arguments as the subclass's loss function."""
        return self._loss_fn(
            query,
            key,
            labels=labels,
            query_ids=query_ids,
            key_ids=key_ids,
            tile_size=self.tile_size,
            group=self.group,
            reduction=self.reduction,
        )

    def _loss_fn(self, query: torch.Tensor, key: torch.Tensor, **shared: Any) -> torch.Tensor:
        """The loss function called with ``shared`` (labels, ids, tile_size, group, reduction)."""
        raise NotImplementedError
