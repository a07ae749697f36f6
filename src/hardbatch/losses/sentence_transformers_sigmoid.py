"""sentence-transformers adapter for the sigmoid (SigLIP) loss: ``HardbatchSigmoidLoss``.

Same anatomy and dataset columns as :class:`hardbatch.losses.HardbatchInfoNCELoss` (anchor, positive[,
negative_1, ..., negative_m]; keys stacked ``[P_1..P_b, N1_1..N1_b, ...]``), computed by the tiled
:func:`hardbatch.losses.sigmoid_loss` with SigLIP's learnable scale and bias (owned by this loss module,
so the trainer's optimiser must include the loss's parameters; sentence-transformers does when the loss
is a module with parameters passed as ``loss=``). Memory O(b·(1+m)·d) embeddings, time 8·b·n·d.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from hardbatch.losses.sentence_transformers_base import SentenceTransformersLoss
from hardbatch.losses.sigmoid import sigmoid_loss

__all__ = ["HardbatchSigmoidLoss"]


class HardbatchSigmoidLoss(SentenceTransformersLoss):
    def __init__(
        self,
        model: nn.Module,
        scale: float = 10.0,
        bias: float = -10.0,
        learnable: bool = True,
        similarity_fct: str | Callable = "cosine",
        mini_batch_size: int | None = None,
        gather_across_devices: bool = False,
        distributed: str = "auto",
        mask_duplicates: bool = False,
        tile_size: int | tuple[int, int] | None = None,
        backend: str | None = None,
    ) -> None:
        """Sigmoid (SigLIP) loss with in-batch and hard negatives, tiled, for sentence-transformers.

        Args:
            model: the SentenceTransformer (kept as ``self.model``; the trainer swaps in its DDP wrapper).
            scale: initial logit scale (SigLIP: 10).
            bias: initial logit bias (SigLIP: −10).
            learnable: learn ``log scale`` and ``bias`` (parameters ``logit_scale`` / ``logit_bias``).
            similarity_fct: ``"cosine"`` (default) or ``"dot"``; ``util.cos_sim`` / ``util.dot_score`` too.
            mini_batch_size: gradient caching with this many texts per encoder call; None: embed directly.
            gather_across_devices: under torch.distributed every device's candidates are negatives
                (local-loss gradient convention, see :func:`hardbatch.losses.info_nce`).
            distributed: ``auto`` | ``gather`` | ``ring`` (see :func:`hardbatch.losses.sigmoid_loss`).
            mask_duplicates: leave out (anchor, candidate) pairs whose candidate text equals the anchor's
                positive (same token ids).
            tile_size: tile of the loss kernel.
            backend: ``auto`` | ``torch`` | ``triton`` (see :func:`hardbatch.losses.sigmoid_loss`).

        Requirements:
            (anchor, positive) pairs or (anchor, positive, negative_1, ..., negative_m) tuples; no labels.

        Example:
            >>> from hardbatch.embed.models import make_tiny_model
            >>> model = make_tiny_model()
            >>> loss = HardbatchSigmoidLoss(model)
            >>> features = [model.tokenize(["a cat", "a dog", "a car"]), model.tokenize(["cat", "dog", "car"])]
            >>> loss(features, None).backward()
            >>> loss.logit_bias.grad is not None
            True
        """
        super().__init__(
            model, scale, similarity_fct, mini_batch_size, gather_across_devices, mask_duplicates, tile_size
        )
        self.learnable = learnable
        if learnable:
            self.logit_scale = nn.Parameter(torch.tensor(math.log(scale), dtype=torch.float32))
            self.logit_bias = nn.Parameter(torch.tensor(float(bias), dtype=torch.float32))
        self.init_scale, self.init_bias = float(scale), float(bias)
        self.distributed = distributed
        self.backend = backend

    def _stacked_loss(self, query: Tensor, keys: Tensor, **shared: Any) -> Tensor:
        scale = self.logit_scale.exp() if self.learnable else self.init_scale
        bias = self.logit_bias if self.learnable else self.init_bias
        return sigmoid_loss(
            query, keys, scale, bias, distributed=self.distributed, backend=self.backend, **shared
        )

    def get_config_dict(self) -> dict[str, Any]:
        own = {"scale": self.init_scale, "bias": self.init_bias, "learnable": self.learnable}
        return {**own, "distributed": self.distributed, **super().get_config_dict()}

    @property
    def citation(self) -> str:
        return """
@inproceedings{zhai2023sigmoid,
      title={Sigmoid Loss for Language Image Pre-Training},
      author={Xiaohua Zhai and Basil Mustafa and Alexander Kolesnikov and Lucas Beyer},
      booktitle={ICCV},
      year={2023},
      url={https://arxiv.org/abs/2303.15343},
}
"""
