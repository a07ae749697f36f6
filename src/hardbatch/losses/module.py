"""``InfoNCELoss``: an ``nn.Module`` around :func:`info_nce` with an optional learnable, clamped scale."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from hardbatch.errors import ConfigError
from hardbatch.losses.info_nce import info_nce
from hardbatch.losses.scaled_module import ScaledLossModule

__all__ = ["InfoNCELoss", "clamp_logit_scales"]


class InfoNCELoss(ScaledLossModule):
    """InfoNCE / CLIP loss module; memory and time as :func:`hardbatch.losses.info_nce`.

    With ``learnable_scale=True`` the module owns ``logit_scale`` (a parameter holding log(scale), as in
    CLIP/OpenCLIP) and uses ``exp(logit_scale)``, so the gradient of the scale is always exact. Keep the
    scale in ``[min_scale, max_scale]`` as OpenCLIP does, by clamping the **parameter after each optimiser
    step**: call :meth:`clamp_` (or :func:`clamp_logit_scales` on a model holding such modules; the
    hardbatch trainer does this after every step). A clamp inside the forward would give a zero gradient
    past the bound, and a scale pushed there by one step could never come back.

    Args:
        scale: initial (or fixed) logit scale, 1 / temperature.
        learnable_scale: learn the scale.
        min_scale: lower clamp of a learnable scale.
        max_scale: upper clamp of a learnable scale (OpenCLIP uses 100).
        symmetric: add the key → query direction (CLIP).
        tile_size: see :func:`info_nce`.
        group: process group for distributed training (see :func:`info_nce` for the gradient convention).
        distributed: under ``group``: ``"gather"``, ``"ring"`` (memory per rank independent of the world
            size) or ``"auto"`` (picks by memory); see :func:`info_nce`.
        reduction: ``mean`` | ``sum`` | ``none``.
        backend: ``auto`` | ``torch`` | ``triton``.

    Example:
        >>> loss_fn = InfoNCELoss(scale=20.0, learnable_scale=True)
        >>> q, k = torch.randn(4, 8, requires_grad=True), torch.randn(6, 8)
        >>> loss = loss_fn(q, k)
        >>> loss.backward()
        >>> loss_fn.logit_scale.grad is not None
        True
        >>> with torch.no_grad():
        ...     _ = loss_fn.logit_scale.fill_(10.0)  # an optimiser step overshoots: scale e^10
        >>> round(float(loss_fn.clamp_().scale), 3)  # back to max_scale
        100.0
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
        distributed: str = "auto",
        reduction: str = "mean",
        backend: str | None = None,
    ) -> None:
        super().__init__(scale, reduction, tile_size, group, scale_bounds=(min_scale, max_scale))
        self.learnable_scale = learnable_scale
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        if learnable_scale and not min_scale <= scale <= max_scale:
            raise ConfigError(f"scale {scale} outside [min_scale, max_scale] = [{min_scale}, {max_scale}]")
        self._init_logits(learnable_scale, scale)
        self.symmetric = symmetric
        self.backend = backend
        self.distributed = distributed

    @torch.no_grad()
    def clamp_(self) -> InfoNCELoss:
        """Clamp a learnable ``logit_scale`` into ``[log(min_scale), log(max_scale)]`` in place (after a step).

        Returns:
            ``self``; a no-op for a fixed scale.
        """
        if self.learnable_scale:
            self.logit_scale.clamp_(math.log(self.min_scale), math.log(self.max_scale))
        return self

    def _loss_fn(self, query: torch.Tensor, key: torch.Tensor, **shared: Any) -> torch.Tensor:
        return info_nce(
            query,
            key,
            scale=self.scale,
            symmetric=self.symmetric,
            backend=self.backend,
            distributed=self.distributed,
            **shared,
        )

    def extra_repr(self) -> str:
        scale = (
            f"learnable in [{self.min_scale}, {self.max_scale}]" if self.learnable_scale else self.fixed_scale
        )
        return (
            f"scale={scale}, symmetric={self.symmetric}, distributed={self.distributed!r}, "
            f"reduction={self.reduction!r}"
        )


def clamp_logit_scales(*modules: nn.Module) -> int:
    """Call :meth:`InfoNCELoss.clamp_` on every learnable-scale ``InfoNCELoss`` inside ``modules``.

    The post-``optimizer.step()`` hook of a training loop; O(number of submodules).

    Returns:
        How many scales were clamped.

    Example:
        >>> model = torch.nn.ModuleDict({"loss": InfoNCELoss(learnable_scale=True, max_scale=50.0)})
        >>> clamp_logit_scales(model)
        1
    """
    count = 0
    for module in modules:
        for sub in module.modules():
            if isinstance(sub, InfoNCELoss) and sub.learnable_scale:
                sub.clamp_()
                count += 1
    return count
