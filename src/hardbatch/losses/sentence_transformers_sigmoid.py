"""sentence-transformers adapter for the sigmoid (SigLIP) loss: ``HardbatchSigmoidLoss``.

Same anatomy and dataset columns as :class:`hardbatch.losses.HardbatchInfoNCELoss` (anchor, positive[,
negative_1, ..., negative_m]; keys stacked ``[P_1..P_b, N1_1..N1_b, ...]``), computed by the tiled
:func:`hardbatch.losses.sigmoid_loss` with SigLIP's learnable scale and bias (owned by this loss module,
so the trainer's optimiser must include the loss's parameters; sentence-transformers does when the loss
is a module with parameters passed as ``loss=``). Memory O(b·(1+m)·d) embeddings, time 8·b·n·d.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardbatch.errors import ConfigError
from hardbatch.losses.gradcache import cached_loss
from hardbatch.losses.layouts import stacked_keys
from hardbatch.losses.sentence_transformers import _embed_columns, _similarity_name, _text_ids
from hardbatch.losses.sigmoid import sigmoid_loss

__all__ = ["HardbatchSigmoidLoss"]


class HardbatchSigmoidLoss(nn.Module):
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
        super().__init__()
        if not scale > 0:
            raise ConfigError(f"scale must be positive, got {scale}")
        if mini_batch_size is not None and mini_batch_size < 1:
            raise ConfigError(f"mini_batch_size must be >= 1 or None, got {mini_batch_size}")
        self.model = model
        self.learnable = learnable
        if learnable:
            self.logit_scale = nn.Parameter(torch.tensor(math.log(scale), dtype=torch.float32))
            self.logit_bias = nn.Parameter(torch.tensor(float(bias), dtype=torch.float32))
        self.init_scale, self.init_bias = float(scale), float(bias)
        self.similarity = _similarity_name(similarity_fct)
        self.mini_batch_size = mini_batch_size
        self.gather_across_devices = gather_across_devices
        self.distributed = distributed
        self.mask_duplicates = mask_duplicates
        self.tile_size = tile_size

    @property
    def uses_gradient_cache(self) -> bool:
        """True when the backward pass re-embeds mini-batches (sentence-transformers capability flag)."""
        return self.mini_batch_size is not None

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        features = list(sentence_features)
        if len(features) < 2:
            raise ConfigError(
                f"expected (anchor, positive[, negatives...]) columns, got {len(features)} column(s)"
            )
        ids = None
        if self.mask_duplicates:
            candidates = [_text_ids(f) for f in features[1:]]
            ids = (candidates[0], torch.cat(candidates))
        if self.mini_batch_size is None:
            return self._loss(_embed_columns(self.model, features), ids)

        def encode(model: nn.Module, chunk: dict[str, Tensor]) -> Tensor:
            return model(chunk)["sentence_embedding"]

        return cached_loss(
            self.model,
            features,
            lambda *embeddings: self._loss(list(embeddings), ids),
            chunk_size=self.mini_batch_size,
            encode=encode,
        )

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        """The loss from per-column embeddings ``[anchor (b, d), positive (b, d), negative_j (b, d)...]``."""
        return self._loss(embeddings, None)

    def _group(self) -> Any:
        if not self.gather_across_devices:
            return None
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return None
        return torch.distributed.group.WORLD

    def _loss(self, embeddings: list[Tensor], ids: tuple[Tensor, Tensor] | None) -> Tensor:
        if len(embeddings) < 2:
            raise ConfigError(f"expected at least 2 embedding columns, got {len(embeddings)}")
        if self.similarity == "cosine":
            embeddings = [F.normalize(e, p=2, dim=-1) for e in embeddings]
        keys, labels = stacked_keys(embeddings[1], embeddings[2:])
        scale = self.logit_scale.exp() if self.learnable else self.init_scale
        bias = self.logit_bias if self.learnable else self.init_bias
        return sigmoid_loss(
            embeddings[0],
            keys,
            scale,
            bias,
            labels=labels,
            query_ids=None if ids is None else ids[0],
            key_ids=None if ids is None else ids[1],
            tile_size=self.tile_size,
            group=self._group(),
            distributed=self.distributed,
        )

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "scale": self.init_scale,
            "bias": self.init_bias,
            "learnable": self.learnable,
            "similarity_fct": self.similarity,
            "mini_batch_size": self.mini_batch_size,
            "gather_across_devices": self.gather_across_devices,
            "distributed": self.distributed,
            "mask_duplicates": self.mask_duplicates,
            "tile_size": self.tile_size,
        }

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
