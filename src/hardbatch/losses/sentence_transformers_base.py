"""What the sentence-transformers losses share: the column anatomy, embedding, gradient caching, ids.

:class:`SentenceTransformersLoss` takes the dataset columns (anchor, positive[, negative_1, ...,
negative_m]), embeds them directly or through the gradient cache (``mini_batch_size``), optionally hashes
the texts for duplicate masking and stacks the keys ``[P_1..P_b, N1_1..N1_b, ...]``; a subclass supplies
only the loss of the anchors against those keys (:meth:`SentenceTransformersLoss._stacked_loss`).
Memory O(b·(1+m)·d) embeddings + one mini-batch of activations with caching.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardbatch.errors import ConfigError
from hardbatch.ids import stable_ids
from hardbatch.losses.gradcache import cached_loss
from hardbatch.losses.layouts import stacked_keys

__all__ = ["SentenceTransformersLoss"]

_SIMILARITIES = ("cosine", "dot")


def _similarity_name(similarity_fct: str | Callable) -> str:
    if isinstance(similarity_fct, str):
        name = similarity_fct
    else:
        name = {"cos_sim": "cosine", "dot_score": "dot"}.get(getattr(similarity_fct, "__name__", ""), "")
    if name not in _SIMILARITIES:
        raise ConfigError(
            f"similarity_fct: expected 'cosine' / 'dot' (or util.cos_sim / util.dot_score), got {similarity_fct!r}"
        )
    return name


def _embed_columns(model: nn.Module, features: list[dict[str, Tensor]]) -> list[Tensor]:
    try:  # sentence-transformers >= 5.4 merges like-shaped columns into one forward pass
        from sentence_transformers.base.losses.merged_forward import embed_columns
    except ImportError:
        return [model(f)["sentence_embedding"] for f in features]
    return embed_columns(model, features)


def _text_ids(features: dict[str, Tensor]) -> Tensor:
    """One id per row from its non-padding token ids: identical texts (same tokenizer) share an id."""
    ids, mask = features["input_ids"], features.get("attention_mask")
    rows = ids.tolist() if mask is None else [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    return torch.from_numpy(stable_ids(repr(tokens) for tokens in rows)).to(ids.device)


def _encode(model: nn.Module, chunk: dict[str, Tensor]) -> Tensor:
    return model(chunk)["sentence_embedding"]


class SentenceTransformersLoss(nn.Module):
    """Base of :class:`HardbatchInfoNCELoss` and :class:`HardbatchSigmoidLoss` (not a loss by itself).

    Args:
        model: the SentenceTransformer (kept as ``self.model``; the trainer swaps in its DDP wrapper).
        scale: the (initial) logit scale; must be positive.
        similarity_fct: ``"cosine"`` or ``"dot"`` (or ``util.cos_sim`` / ``util.dot_score``).
        mini_batch_size: gradient caching with this many texts per encoder call; None: embed directly.
        gather_across_devices: under torch.distributed, every device's candidates are negatives.
        mask_duplicates: hash every candidate's token ids so the loss can mask duplicate texts.
        tile_size: tile of the loss kernel.

    Raises:
        ConfigError: non-positive ``scale``, ``mini_batch_size`` < 1, unknown ``similarity_fct``.
    """

    def __init__(
        self,
        model: nn.Module,
        scale: float,
        similarity_fct: str | Callable,
        mini_batch_size: int | None,
        gather_across_devices: bool,
        mask_duplicates: bool,
        tile_size: int | tuple[int, int] | None,
    ) -> None:
        super().__init__()
        if not scale > 0:
            raise ConfigError(f"scale must be positive, got {scale}")
        if mini_batch_size is not None and mini_batch_size < 1:
            raise ConfigError(f"mini_batch_size must be >= 1 or None, got {mini_batch_size}")
        self.model = model
        self.similarity = _similarity_name(similarity_fct)
        self.mini_batch_size = mini_batch_size
        self.gather_across_devices = gather_across_devices
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
        ids = self._ids(features) if self.mask_duplicates else None
        if self.mini_batch_size is None:
            return self._loss(_embed_columns(self.model, features), ids)
        return cached_loss(
            self.model,
            features,
            lambda *embeddings: self._loss(list(embeddings), ids),
            chunk_size=self.mini_batch_size,
            encode=_encode,
        )

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        """The loss from per-column embeddings ``[anchor (b, d), positive (b, d), negative_j (b, d)...]``."""
        return self._loss(embeddings, None)

    def _ids(self, features: list[dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
        candidates = [_text_ids(f) for f in features[1:]]
        return candidates[0], torch.cat(candidates)

    def _group(self) -> Any:
        if not self.gather_across_devices:
            return None
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return None  # single process: nothing to gather (same as sentence-transformers)
        return torch.distributed.group.WORLD

    def _loss(self, embeddings: list[Tensor], ids: tuple[Tensor, Tensor] | None) -> Tensor:
        if len(embeddings) < 2:
            raise ConfigError(f"expected at least 2 embedding columns, got {len(embeddings)}")
        if self.similarity == "cosine":
            embeddings = [F.normalize(e, p=2, dim=-1) for e in embeddings]
        keys, labels = stacked_keys(embeddings[1], embeddings[2:])
        return self._stacked_loss(
            embeddings[0],
            keys,
            labels=labels,
            query_ids=None if ids is None else ids[0],
            key_ids=None if ids is None else ids[1],
            tile_size=self.tile_size,
            group=self._group(),
        )

    def _stacked_loss(self, query: Tensor, keys: Tensor, **shared: Any) -> Tensor:
        """The loss of the anchors ``query`` (b, d) against the stacked ``keys`` (b·(1+m), d) called with
        ``shared`` (labels, query_ids, key_ids, tile_size, group)."""
        raise NotImplementedError

    def get_config_dict(self) -> dict[str, Any]:
        """The settings both adapters share (subclasses add their loss's own)."""
        return {
            "similarity_fct": self.similarity,
            "mini_batch_size": self.mini_batch_size,
            "gather_across_devices": self.gather_across_devices,
            "mask_duplicates": self.mask_duplicates,
            "tile_size": self.tile_size,
        }
