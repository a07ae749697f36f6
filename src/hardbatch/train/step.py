"""One training step: embed a tokenised batch, compute the InfoNCE loss, back-propagate.

Two paths with the same loss and (up to float rounding) the same gradients:

* **direct**: one forward over the batch's queries and documents, ``loss.backward()``;
  activation memory O(b · (2 + h) · L).
* **gradient cache** (``gradcache_chunk=c``, Gao et al. 2021, via :func:`hardbatch.losses.gradcache.cached_loss`):
  embed everything in chunks of ``c`` texts without autograd, compute the loss and its gradient with
  respect to the embeddings, then re-embed chunk by chunk with autograd (replaying each chunk's RNG state,
  so dropout masks match) and back-propagate the cached embedding gradients; activation memory O(c · L)
  and one extra forward pass. Under DDP every chunk but the last runs inside ``no_sync()``.

The model is wrapped by :class:`DualEncoder` so that DDP sees one forward call per backward.

Image–text models: a column that mixes texts and images is embedded as one call per modality and put back
in row order; with ``config.freeze_tower`` the frozen tower's inputs are embedded without autograd (and,
with the gradient cache, without replay).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from hardbatch.errors import ConfigError
from hardbatch.train.collate import TokenizedPairs, assemble_column, column_groups

__all__ = ["DualEncoder", "StepRunner"]


class DualEncoder(torch.nn.Module):
    """Embed any number of feature dicts with one SentenceTransformer in one ``forward`` call.

    Args:
        model: a SentenceTransformer (``model(features)["sentence_embedding"]`` is (rows, dim)).

    Returns (forward):
        A tuple with one (rows_i, dim) embedding tensor per feature dict.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *features: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(dict(f))["sentence_embedding"] for f in features)


class StepRunner:
    """Runs the forward/loss/backward of one step for :class:`hardbatch.train.Trainer`.

    Args:
        encoder: the :class:`DualEncoder`, possibly wrapped in ``DistributedDataParallel``.
        config: the run's ``TrainConfig`` (``scale``, ``symmetric``, ``gradcache_chunk``).
        ctx: the ``DistContext`` (its group makes the loss use every rank's documents).
        autocast_dtype: ``torch.bfloat16`` for mixed precision, ``None`` for fp32.
    """

    def __init__(
        self, encoder: torch.nn.Module, config: Any, ctx: Any, autocast_dtype: torch.dtype | None
    ) -> None:
        self.encoder = encoder
        self.config = config
        self.ctx = ctx
        self.autocast_dtype = autocast_dtype

    # ------------------------------------------------------------------ public
    def step(self, batch: TokenizedPairs) -> float:
        """Accumulate the gradient of the batch's loss into ``.grad``; return the (local) loss value."""
        query_ids, key_ids = batch.query_ids, batch.key_ids
        groups = _Groups([batch.query, batch.document], self._frozen_modality())
        if not groups.trained:
            raise ConfigError(
                f"freeze_tower={self._frozen_modality()!r} freezes every input of this batch (all "
                f"{self._frozen_modality()}): nothing to train"
            )
        if self.config.gradcache_chunk:
            return self._cached_step(groups, query_ids, key_ids)
        with self._autocast():
            trained = self.encoder(*groups.trained)
            frozen = [self._frozen_embedding(f) for f in groups.frozen]
        query, document = groups.assemble(trained, frozen)
        loss = self.loss(query, document, query_ids, key_ids)
        loss.backward()
        return float(loss.detach())

    def loss(
        self,
        query: torch.Tensor,
        document: torch.Tensor,
        query_ids: torch.Tensor | None = None,
        key_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Tiled InfoNCE of (b, d) queries against (n, d) documents; query ``i``'s positive is document ``i``."""
        from hardbatch.losses import info_nce

        device = query.device
        # No fp32 cast: bf16 embeddings (autocast) go to the loss as they are; its tiles run bf16 matmuls
        # where that is fast and keep exp / log-sum-exp and accumulation in fp32 (losses.tiled.tile_dtype).
        return info_nce(
            query,
            document,
            scale=self.config.scale,
            symmetric=self.config.symmetric,
            query_ids=None if query_ids is None else query_ids.to(device),
            key_ids=None if key_ids is None else key_ids.to(device),
            group=self.ctx.group,
        )

    # ------------------------------------------------------------------ gradient cache
    def _cached_step(
        self, groups: _Groups, query_ids: torch.Tensor | None, key_ids: torch.Tensor | None
    ) -> float:
        from hardbatch.losses.gradcache import cached_loss, split_batch

        def encode(encoder: Any, chunk: dict[str, Any]) -> torch.Tensor:
            with self._autocast():
                (embedding,) = encoder(chunk)
            return embedding

        chunk_size = int(self.config.gradcache_chunk)
        # A frozen tower needs no replay: its embeddings are constants, computed chunk by chunk.
        with self._autocast():
            frozen = [
                torch.cat([self._frozen_embedding(c) for c in split_batch(f, chunk_size)])
                for f in groups.frozen
            ]

        def loss_fn(*trained: torch.Tensor) -> torch.Tensor:
            query, document = groups.assemble(trained, frozen)
            return self.loss(query, document, query_ids, key_ids)

        loss = cached_loss(self.encoder, groups.trained, loss_fn, chunk_size=chunk_size, encode=encode)
        loss.backward()
        return float(loss.detach())

    def _frozen_modality(self) -> str | None:
        return getattr(self.config, "freeze_tower", None)

    def _frozen_embedding(self, features: dict[str, Any]) -> torch.Tensor:
        # The underlying module, not the DDP wrapper: no parameter of a frozen tower takes part in backward.
        module = getattr(self.encoder, "module", self.encoder)
        with torch.no_grad():
            (embedding,) = module(features)
        return embedding.float()

    # ------------------------------------------------------------------ helpers
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.ctx.device.type, dtype=self.autocast_dtype)


class _Groups:
    """The model calls of one batch: every column's feature dicts (one per modality), split into those
    through a trained tower and those through a frozen one, and how to put the embeddings back together.

    Args:
        columns: the query and document columns (feature dicts or ``MixedFeatures``).
        frozen_tower: ``"text"``, ``"image"`` or None; a feature dict whose ``modality`` is that tower's
            goes to ``frozen``.
    """

    def __init__(self, columns: list[Any], frozen_tower: str | None) -> None:
        self.columns = columns
        self.trained: list[dict[str, Any]] = []
        self.frozen: list[dict[str, Any]] = []
        self.slots: list[list[tuple[bool, int]]] = []
        for column in columns:
            slots = []
            for features in column_groups(column):
                is_frozen = frozen_tower is not None and _tower_of(features) == frozen_tower
                target = self.frozen if is_frozen else self.trained
                slots.append((is_frozen, len(target)))
                target.append(features)
            self.slots.append(slots)

    def assemble(self, trained: Any, frozen: Any) -> list[torch.Tensor]:
        out = []
        for column, slots in zip(self.columns, self.slots):
            parts = [frozen[i] if is_frozen else trained[i] for is_frozen, i in slots]
            out.append(assemble_column(column, parts))
        return out


def _tower_of(features: dict[str, Any]) -> str:
    modality = features.get("modality")
    if modality == "image" or (modality is None and "pixel_values" in features):
        return "image"
    return "text"
