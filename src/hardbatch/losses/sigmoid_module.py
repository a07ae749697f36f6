"""``SigmoidLoss``: an ``nn.Module`` around :func:`sigmoid_loss` with SigLIP's learnable scale and bias."""

from __future__ import annotations

from typing import Any

import torch

from hardbatch.losses.scaled_module import ScaledLossModule
from hardbatch.losses.sigmoid import sigmoid_loss

__all__ = ["SigmoidLoss"]


class SigmoidLoss(ScaledLossModule):
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
        backend: ``auto`` | ``torch`` | ``triton`` (see :func:`sigmoid_loss`).

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
        backend: str | None = None,
    ) -> None:
        super().__init__(scale, reduction, tile_size, group)
        self.learnable = learnable
        self._init_logits(learnable, scale, bias)
        self.distributed = distributed
        self.backend = backend

    @property
    def bias(self) -> float | torch.Tensor:
        """The logit bias used now."""
        return self.logit_bias if self.learnable else self.fixed_bias

    def _loss_fn(self, query: torch.Tensor, key: torch.Tensor, **shared: Any) -> torch.Tensor:
        return sigmoid_loss(
            query, key, self.scale, self.bias, distributed=self.distributed, backend=self.backend, **shared
        )

    def extra_repr(self) -> str:
        kind = "learnable" if self.learnable else "fixed"
        return f"{kind} scale/bias, distributed={self.distributed!r}, reduction={self.reduction!r}"
