"""``InfoNCELoss``: an ``nn.Module`` around :func:`info_nce` with an optional learnable, clamped scale."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from hardbatch.errors import ConfigError
from hardbatch.losses.info_nce import info_nce
from hardbatch.losses.inputs import REDUCTIONS

__all__ = ["InfoNCELoss"]


class InfoNCELoss(nn.Module):
    """InfoNCE / CLIP loss module; memory and time as :func:`hardbatch.losses.info_nce`.

    With ``learnable_scale=True`` the module owns ``logit_scale`` (a parameter holding log(scale), as in
    CLIP/OpenCLIP) and uses ``exp(clamp(logit_scale, log(min_scale), log(max_scale)))``: the clamp keeps
    the temperature in range without editing the parameter after each optimiser step, and the gradient of
    the scale is exact inside the range (zero outside, like any clamp).

    Args:
        scale: initial (or fixed) logit scale, 1 / temperature.
        learnable_scale: learn the scale.
        min_scale: lower clamp of a learnable scale.
        max_scale: upper clamp of a learnable scale (OpenCLIP uses 100).
        symmetric: add the key → query direction (CLIP).
        tile_size: see :func:`info_nce`.
        group: process group for distributed training (see :func:`info_nce` for the gradient convention).
        reduction: ``mean`` | ``sum`` | ``none``.
        backend: ``auto`` | ``torch`` | ``triton``.

    Example:
        >>> loss_fn = InfoNCELoss(scale=20.0, learnable_scale=True)
        >>> q, k = torch.randn(4, 8, requires_grad=True), torch.randn(6, 8)
        >>> loss = loss_fn(q, k)
        >>> loss.backward()
        >>> loss_fn.logit_scale.grad is not None
        True
    """

    def __init__(
        self,
        scale: float = 20.0,
        *,
        learnable_scale: bool = False,
        min_scale: float = 1.0,
        max_scale: float = 100.0,
        symmetric: bool = True,
        tile_size: int | tuple[int, int] | None = None,
        group: Any = None,
        reduction: str = "mean",
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if not scale > 0:
            raise ConfigError(f"scale must be positive, got {scale}")
        if not 0 < min_scale <= max_scale:
            raise ConfigError(f"need 0 < min_scale <= max_scale, got {min_scale} and {max_scale}")
        if reduction not in REDUCTIONS:
            raise ConfigError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
        self.learnable_scale = learnable_scale
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        if learnable_scale:
            self.logit_scale = nn.Parameter(torch.tensor(math.log(scale), dtype=torch.float32))
        else:
            self.fixed_scale = float(scale)
        self.symmetric = symmetric
        self.tile_size = tile_size
        self.group = group
        self.reduction = reduction
        self.backend = backend

    @property
    def scale(self) -> float | torch.Tensor:
        """The logit scale used now (a tensor with grad when learnable)."""
        if not self.learnable_scale:
            return self.fixed_scale
        low, high = math.log(self.min_scale), math.log(self.max_scale)
        return self.logit_scale.clamp(low, high).exp()

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        labels: torch.Tensor | None = None,
        query_ids: torch.Tensor | None = None,
        key_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss of ``query`` (b, d) against ``key`` (n, d); see :func:`info_nce`."""
        return info_nce(
            query,
            key,
            labels,
            scale=self.scale,
            symmetric=self.symmetric,
            query_ids=query_ids,
            key_ids=key_ids,
            tile_size=self.tile_size,
            group=self.group,
            reduction=self.reduction,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        scale = (
            f"learnable in [{self.min_scale}, {self.max_scale}]" if self.learnable_scale else self.fixed_scale
        )
        return f"scale={scale}, symmetric={self.symmetric}, reduction={self.reduction!r}"
