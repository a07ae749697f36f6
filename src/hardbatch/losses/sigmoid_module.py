"""``SigmoidLoss``: an ``nn.Module`` around :func:`sigmoid_loss` with SigLIP's learnable scale and bias."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from hardbatch.errors import ConfigError
from hardbatch.losses.inputs import REDUCTIONS
from hardbatch.losses.sigmoid import sigmoid_loss

__all__ = ["SigmoidLoss"]


class SigmoidLoss(nn.Module):
    """Sigmoid (SigLIP) loss module; memory and time as :func:`hardbatch.losses.sigmoid_loss`.

    With ``learnable=True`` (default) the module owns ``logit_scale`` (log of the scale) and ``logit_bias``,
    initialised as in SigLIP: ``logit_scale = log 10``, ``logit_bias = −10``; both gradients are exact
    and nothing is clamped (SigLIP does not clamp; clamp ``logit_scale`` after the optimiser step if
    you want a bound, as OpenCLIP does).

    Args:
        scale: initial (or fixed) logit scale.
        bias: initial (or fixed) logit bias.
        learnable: learn the scale (as its log) and the bias.
        tile_size: see :func:`sigmoid_loss`.
        group: process group for distributed training (gradient convention as :func:`info_nce`).
        distributed: ``auto`` | ``gather`` | ``ring``.
        reduction: ``mean`` | ``sum`` | ``none``.

    Example:
        >>> loss_fn = SigmoidLoss()
        >>> q, k = torch.randn(4, 8, requires_grad=True), torch.randn(6, 8)
        >>> loss_fn(q, k).backward()
        >>> loss_fn.logit_scale.grad is not None and loss_fn.logit_bias.grad is not None
        True
    """

    def __init__(
        self,
        scale: float = 10.0,
        bias: float = -10.0,
        *,
        learnable: bool = True,
        tile_size: int | tuple[int, int] | None = None,
        group: Any = None,
        distributed: str = "auto",
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if not scale > 0:
            raise ConfigError(f"scale must be positive, got {scale}")
        if reduction not in REDUCTIONS:
            raise ConfigError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
        self.learnable = learnable
        if learnable:
            self.logit_scale = nn.Parameter(torch.tensor(math.log(scale), dtype=torch.float32))
            self.logit_bias = nn.Parameter(torch.tensor(float(bias), dtype=torch.float32))
        else:
            self.fixed_scale, self.fixed_bias = float(scale), float(bias)
        self.tile_size = tile_size
        self.group = group
        self.distributed = distributed
        self.reduction = reduction

    @property
    def scale(self) -> float | torch.Tensor:
        """The logit scale used now (a tensor with grad when learnable)."""
        return self.logit_scale.exp() if self.learnable else self.fixed_scale

    @property
    def bias(self) -> float | torch.Tensor:
        """The logit bias used now."""
        return self.logit_bias if self.learnable else self.fixed_bias

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        labels: torch.Tensor | None = None,
        query_ids: torch.Tensor | None = None,
        key_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss of ``query`` (b, d) against ``key`` (n, d); see :func:`sigmoid_loss`."""
        return sigmoid_loss(
            query,
            key,
            self.scale,
            self.bias,
            labels=labels,
            query_ids=query_ids,
            key_ids=key_ids,
            tile_size=self.tile_size,
            group=self.group,
            distributed=self.distributed,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        kind = "learnable" if self.learnable else "fixed"
        return f"{kind} scale/bias, distributed={self.distributed!r}, reduction={self.reduction!r}"
