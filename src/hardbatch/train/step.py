"""One training step: embed a tokenised batch, compute the InfoNCE loss, back-propagate.

Two paths with the same loss and (up to float rounding) the same gradients:

* **direct**: one forward over the batch's queries and documents, ``loss.backward()``;
  activation memory O(b · (2 + h) · L).
* **gradient cache** (``gradcache_chunk=c``, Gao et al. 2021): embed everything in chunks of ``c`` texts
  without autograd, compute the loss and its gradient with respect to the embeddings, then re-embed chunk
  by chunk with autograd and back-propagate the cached embedding gradients; activation memory O(c · L)
  and one extra forward pass. The chunk re-runs replay the RNG state of the first pass so dropout masks
  match (the cached gradients must belong to the re-computed embeddings).

Under DDP every backward except the last runs inside ``no_sync()`` so gradients are all-reduced once per
step. The model is wrapped by :class:`DualEncoder` so that DDP sees one forward call per backward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from hardbatch.train.collate import TokenizedPairs, slice_features

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
        if self.config.gradcache_chunk:
            return self._cached_step(batch, query_ids, key_ids)
        with self._autocast():
            query, document = self.encoder(batch.query, batch.document)
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
        return info_nce(
            query.float(),
            document.float(),
            scale=self.config.scale,
            symmetric=self.config.symmetric,
            query_ids=None if query_ids is None else query_ids.to(device),
            key_ids=None if key_ids is None else key_ids.to(device),
            group=self.ctx.group,
        )

    # ------------------------------------------------------------------ gradient cache
    def _cached_step(
        self, batch: TokenizedPairs, query_ids: torch.Tensor | None, key_ids: torch.Tensor | None
    ) -> float:
        chunk = int(self.config.gradcache_chunk)
        parts = [("query", batch.query, start, stop) for start, stop in _ranges(batch.num_queries, chunk)]
        n_docs = _rows(batch.document)
        parts += [("document", batch.document, start, stop) for start, stop in _ranges(n_docs, chunk)]
        # Pass 1: embeddings without autograd, remembering the RNG state before each chunk.
        rng_states, embeddings = [], {"query": [], "document": []}
        with torch.no_grad():
            for kind, features, start, stop in parts:
                rng_states.append(_RngState.capture(self.ctx.device))
                with self._autocast():
                    (emb,) = self.encoder(slice_features(features, start, stop))
                embeddings[kind].append(emb.float())
        query = torch.cat(embeddings["query"]).requires_grad_()
        document = torch.cat(embeddings["document"]).requires_grad_()
        # The loss and its gradient with respect to the (cached) embeddings.
        loss = self.loss(query, document, query_ids, key_ids)
        loss.backward()
        grads = {"query": query.grad, "document": document.grad}
        # Pass 2: re-embed each chunk with autograd and push the cached gradient through it.
        final_rng = _RngState.capture(self.ctx.device)
        for position, (kind, features, start, stop) in enumerate(parts):
            rng_states[position].restore()
            last = position == len(parts) - 1
            with self._sync_context(last), self._autocast():
                (emb,) = self.encoder(slice_features(features, start, stop))
                grad = grads[kind][start:stop]
                surrogate = torch.sum(emb.float() * grad)
            surrogate.backward()
        final_rng.restore()
        return float(loss.detach())

    # ------------------------------------------------------------------ helpers
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.ctx.device.type, dtype=self.autocast_dtype)

    def _sync_context(self, last: bool) -> contextlib.AbstractContextManager:
        no_sync = getattr(self.encoder, "no_sync", None)
        if last or no_sync is None:
            return contextlib.nullcontext()
        return no_sync()


class _RngState:
    """CPU (and current CUDA device) RNG state, so a chunk's re-run draws the same dropout masks."""

    def __init__(self, cpu: torch.Tensor, cuda: torch.Tensor | None, device: torch.device) -> None:
        self.cpu, self.cuda, self.device = cpu, cuda, device

    @classmethod
    def capture(cls, device: torch.device) -> _RngState:
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), cuda, device)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


def _rows(features: dict[str, Any]) -> int:
    return (
        int(features["input_ids"].shape[0])
        if "input_ids" in features
        else int(next(v for v in features.values() if isinstance(v, torch.Tensor)).shape[0])
    )


def _ranges(total: int, chunk: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, chunk):
        yield start, min(start + chunk, total)
