"""OpenCLIP drop-in: ``ClipLoss`` with OpenCLIP's constructor and call, backed by the tiled :func:`info_nce`.

An OpenCLIP training script changes one line::

    # from open_clip.loss import ClipLoss
    from hardbatch.losses.open_clip import ClipLoss

and keeps its arguments (``local_loss``, ``gather_with_grad``, ``cache_labels``, ``rank``, ``world_size``)
and its call ``loss(image_features, text_features, logit_scale, output_dict=False)``. The value and the
gradients follow OpenCLIP's semantics for every combination of ``local_loss`` and ``gather_with_grad``
(table in docs/losses.md), but no (W·b × W·b) logit matrix is built: memory is O(W·b·d) for the gathered
features plus the tiles, time 8·b·(W·b)·d FLOPs per rank with ``local_loss`` and the same without it
(OpenCLIP's global loss computes W× more, every rank repeating the whole matrix).

The gradient of ``logit_scale`` equals OpenCLIP's on every rank for ``local_loss=False``; with
``local_loss=True`` and ``gather_with_grad=True`` every rank already holds the rank average of OpenCLIP's
per-rank gradients (what DDP's averaging produces from OpenCLIP's), so results after DDP are identical.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from hardbatch.errors import ConfigError
from hardbatch.losses.distributed import all_gather_rows
from hardbatch.losses.info_nce import info_nce

__all__ = ["ClipLoss"]


def _with_gradient_factor(value: torch.Tensor | float, factor: float) -> torch.Tensor | float:
    """``value`` unchanged in forward; its gradient multiplied by ``factor`` in backward."""
    if factor == 1.0 or not isinstance(value, torch.Tensor) or not value.requires_grad:
        return value
    return value * factor - (value * (factor - 1.0)).detach()


class ClipLoss(torch.nn.Module):
    """Symmetric CLIP loss with OpenCLIP ``ClipLoss``'s interface, computed tile by tile.

    Args:
        local_loss: each rank's loss covers its own images and texts against all ranks' (OpenCLIP
            ``--local-loss``); otherwise every rank returns the loss of the whole global batch.
        gather_with_grad: gradients flow through the gathered features to the ranks that own them
            (OpenCLIP ``--gather-with-grad``). Without it, with ``local_loss`` only the query side of each
            direction receives gradient (OpenCLIP's behaviour, kept for parity); without ``local_loss``
            the global loss's gradient reaches the local features.
        cache_labels: accepted for compatibility; the tiled loss needs no label tensor to cache.
        rank: this process's rank in the default process group (checked against torch.distributed).
        world_size: number of ranks; > 1 needs an initialised default process group.
        use_horovod: not supported (raises :class:`ConfigError`).
        tile_size: tile of the loss kernel (see :func:`hardbatch.losses.info_nce`).
        backend: ``auto`` | ``torch`` | ``triton``.

    Raises:
        ConfigError: ``use_horovod``; ``world_size > 1`` without an initialised process group or with a
            different world size or rank than torch.distributed reports; unequal shard sizes.

    Example:
        >>> import torch.nn.functional as F
        >>> image = F.normalize(torch.randn(6, 8), dim=-1)
        >>> text = F.normalize(torch.randn(6, 8), dim=-1)
        >>> loss = ClipLoss()(image, text, torch.tensor(10.0))
        >>> logits = 10.0 * image @ text.T
        >>> labels = torch.arange(6)
        >>> naive = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        >>> torch.allclose(loss, naive, atol=1e-5)
        True
    """

    def __init__(
        self,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
        use_horovod: bool = False,
        *,
        tile_size: int | tuple[int, int] | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if use_horovod:
            raise ConfigError("ClipLoss(use_horovod=True) is not supported; use torch.distributed")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(
                f"ClipLoss: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        self.local_loss = bool(local_loss)
        self.gather_with_grad = bool(gather_with_grad)
        self.cache_labels = bool(cache_labels)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.use_horovod = False
        self.tile_size = tile_size
        self.backend = backend

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        output_dict: bool = False,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Loss of (b, d) image features against (b, d) text features (already normalised, as in OpenCLIP).

        Args:
            image_features: (b, d) float tensor, this rank's images.
            text_features: (b, d) float tensor, this rank's texts (text i pairs with image i).
            logit_scale: the multiplier of the dot products (OpenCLIP passes ``model.logit_scale.exp()``),
                a float or a one-element tensor that may require grad.
            output_dict: return ``{"contrastive_loss": loss}`` instead of the scalar.

        Returns:
            The scalar loss, or a dict holding it.
        """
        if self.world_size > 1:
            self._check_world()
            loss = self._distributed(image_features, text_features, logit_scale)
        else:
            loss = self._tiled(image_features, text_features, logit_scale, group=None)
        return {"contrastive_loss": loss} if output_dict else loss

    # ------------------------------------------------------------------ helpers
    def _tiled(
        self, query: torch.Tensor, key: torch.Tensor, scale: Any, group: Any, **kw: Any
    ) -> torch.Tensor:
        return info_nce(
            query, key, scale=scale, group=group, tile_size=self.tile_size, backend=self.backend, **kw
        )

    def _check_world(self) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise ConfigError(
                f"ClipLoss(world_size={self.world_size}) needs an initialised torch.distributed process group"
            )
        if dist.get_world_size() != self.world_size or dist.get_rank() != self.rank:
            raise ConfigError(
                f"ClipLoss(rank={self.rank}, world_size={self.world_size}) disagrees with torch.distributed "
                f"(rank {dist.get_rank()}, world size {dist.get_world_size()})"
            )

    def _distributed(self, image: torch.Tensor, text: torch.Tensor, logit_scale: Any) -> torch.Tensor:
        world = self.world_size
        if self.local_loss and not self.gather_with_grad:
            # OpenCLIP: the gathered features carry no gradient, so each direction back-propagates into
            # its local queries only: two one-way losses against detached global keys.
            all_image = all_gather_rows(image.detach(), True)
            all_text = all_gather_rows(text.detach(), True)
            labels = torch.arange(image.shape[0], device=image.device) + self.rank * image.shape[0]
            image_to_text = self._tiled(image, all_text, logit_scale, None, labels=labels, symmetric=False)
            text_to_image = self._tiled(text, all_image, logit_scale, None, labels=labels, symmetric=False)
            return (image_to_text + text_to_image) / 2
        if self.local_loss:
            # Rank r's loss L_r over its rows; the backward gives its features the gradient of Σ_r L_r,
            # exactly what OpenCLIP's gather-with-grad all-gather returns.
            return self._tiled(image, text, logit_scale, True, symmetric=True)
        # Global loss L = (1/W) Σ_r L_r on every rank. Without gather_with_grad OpenCLIP's local features
        # get ∇L; with it the all-gather backward sums W copies: W·∇L = ∇ Σ_r L_r.
        factor = 1.0 if self.gather_with_grad else 1.0 / world
        # The tiled backward averages the scale gradient over ranks; OpenCLIP's is the global loss's own.
        scale = _with_gradient_factor(logit_scale, 1.0 if self.gather_with_grad else float(world))
        local = self._tiled(image, text, scale, True, symmetric=True)
        total = local.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        global_loss = total / world
        return local * factor + (global_loss - local * factor).detach()
