"""Gradient cache: contrastive batches bounded by embedding memory, not encoder activations.

Three steps (Gao et al., 2021):

1. embed the batch chunk by chunk **without** autograd, remembering each chunk's RNG state (CPU + CUDA);
2. compute the loss on the detached embeddings (leaves that require grad); the caller's ``backward()`` then
   yields d(loss)/d(embeddings) (and the gradients of any parameters of the loss itself, e.g. a learnable
   scale, scaled by the outer ``grad_output`` like everything else);
3. a hook on each embedding leaf re-embeds every chunk **with** autograd under the replayed RNG state (same
   dropout masks) and back-propagates ``<embeddings_chunk, cached_grad_chunk>`` into the encoder.

Memory: activations of one chunk + O(B·d) embeddings and their gradients (+ the loss's own memory, O(B·d) for
:func:`hardbatch.losses.info_nce`). Time: one extra encoder forward per chunk (≈ +33% encoder FLOPs).
Under DDP every chunk but the last runs inside ``no_sync()``, so gradients are all-reduced once per step.

References:
    Gao, Zhang, Han, Callan, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"
    (GradCache), RepL4NLP 2021, arXiv 2101.06983.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import get_device_states, set_device_states

from hardbatch.errors import ConfigError

__all__ = ["GradCache", "RngState", "batch_size_of", "cached_loss", "default_encode", "split_batch"]

Batch = Any  # a Tensor, a Mapping of tensors (tokenizer output), or a list of examples


def _tensors_in(batch: Batch) -> list[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, Mapping):
        return [value for value in batch.values() if isinstance(value, torch.Tensor)]
    return []


class RngState:
    """Snapshot of the CPU RNG and the CUDA RNG of every device holding one of ``tensors``.

    Example:
        >>> state = RngState.capture(torch.zeros(1))
        >>> first = torch.rand(1)
        >>> with state.replay():
        ...     again = torch.rand(1)
        >>> bool(first == again)
        True
    """

    def __init__(
        self, cpu_state: torch.Tensor, devices: list[int], device_states: list[torch.Tensor]
    ) -> None:
        self.cpu_state = cpu_state
        self.devices = devices
        self.device_states = device_states

    @classmethod
    def capture(cls, *tensors: torch.Tensor) -> RngState:
        devices, states = get_device_states(*tensors)
        return cls(torch.get_rng_state(), devices, states)

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block with the captured RNG state; the RNG outside the block is left untouched."""
        with torch.random.fork_rng(devices=self.devices, enabled=True):
            torch.set_rng_state(self.cpu_state)
            set_device_states(self.devices, self.device_states)
            yield


def batch_size_of(batch: Batch) -> int:
    """Number of examples in a batch (first dimension of its tensors, or ``len`` of a list)."""
    tensors = _tensors_in(batch)
    if tensors:
        return int(tensors[0].shape[0])
    return len(batch)


def _slice(batch: Batch, start: int, stop: int, trim_padding: bool) -> Batch:
    if isinstance(batch, torch.Tensor):
        return batch[start:stop]
    if isinstance(batch, Mapping):
        rows = batch_size_of(batch)
        width = None
        mask = batch.get("attention_mask")
        if trim_padding and isinstance(mask, torch.Tensor) and mask.ndim == 2:
            used = mask[start:stop].any(dim=0).nonzero()
            # Drop trailing all-padding columns of this chunk (right padding only; left padding is kept).
            width = int(used.max()) + 1 if used.numel() else mask.shape[1]
            full_width = mask.shape[1]
        out = {}
        for name, value in batch.items():
            if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == rows:
                value = value[start:stop]
                if width is not None and value.ndim >= 2 and value.shape[1] == full_width:
                    value = value[:, :width]
            out[name] = value
        return out
    return batch[start:stop]


def split_batch(batch: Batch, chunk_size: int, *, trim_padding: bool = True) -> list[Batch]:
    """Split a batch into chunks of ``chunk_size`` examples (the last may be smaller).

    Mappings (tokenizer outputs) are sliced along dim 0 for every tensor with one row per example; with
    ``trim_padding`` trailing columns that are padding for the whole chunk are dropped.

    Example:
        >>> [c.shape[0] for c in split_batch(torch.zeros(5, 2), 2)]
        [2, 2, 1]
    """
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    rows = batch_size_of(batch)
    return [
        _slice(batch, start, min(start + chunk_size, rows), trim_padding)
        for start in range(0, rows, chunk_size)
    ]


def default_encode(encoder: Callable[[Batch], Any], batch: Batch) -> torch.Tensor:
    """Call ``encoder(batch)``; accept a tensor or a dict with ``"sentence_embedding"`` (SentenceTransformer)."""
    output = encoder(batch)
    if isinstance(output, Mapping):
        if "sentence_embedding" not in output:
            raise ConfigError(
                f"encoder returned a mapping without 'sentence_embedding' (keys: {sorted(output)}); "
                "pass encode=... to pick the embedding"
            )
        output = output["sentence_embedding"]
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        raise ConfigError("encoder must return a (rows, dim) embedding tensor")
    return output


@dataclass
class _Replay:
    """State shared by the hooks of one cached step (all columns)."""

    encoder: Callable[[Batch], Any]
    encode: Callable[[Callable[[Batch], Any], Batch], torch.Tensor]
    ddp: DistributedDataParallel | None
    remaining: int
    chunks: list[list[Batch | None]] = field(default_factory=list)
    states: list[list[RngState | None]] = field(default_factory=list)

    def sync_context(self, last: bool) -> contextlib.AbstractContextManager:
        if self.ddp is None or last:
            return contextlib.nullcontext()
        return self.ddp.no_sync()

    def backward_column(self, column: int, grad: torch.Tensor) -> None:
        chunks, states = self.chunks[column], self.states[column]
        if any(chunk is None for chunk in chunks):
            raise RuntimeError("cached_loss: backward ran twice through one cached step (retain_graph?)")
        sizes = [batch_size_of(chunk) for chunk in chunks]
        for index, chunk_grad in enumerate(grad.split(sizes)):
            self.remaining -= 1
            with self.sync_context(last=self.remaining == 0), torch.enable_grad():
                with states[index].replay():
                    embedding = self.encode(self.encoder, _fresh(chunks[index]))
                # fp32 surrogate: low-precision embeddings must not round the cached gradient.
                surrogate = (embedding.float() * chunk_grad.float()).sum()
                surrogate.backward()
            # Each chunk is replayed once: drop its inputs and RNG state as soon as it is done.
            chunks[index] = states[index] = None
            del embedding, surrogate


def _fresh(chunk: Batch) -> Batch:
    """A shallow copy of a mapping chunk, so the encoder's writes into its input stay out of the cache.

    sentence-transformers modules add their outputs (``token_embeddings``, ``sentence_embedding``, ...) to
    the feature dict they are given. Kept chunks would then hold every chunk's token embeddings (and, during
    the replay, tensors of its graph) until the step ends: O(B·L·h) memory, the activations the cache exists
    to avoid.
    """
    return dict(chunk) if isinstance(chunk, Mapping) else chunk


def _find_ddp(encoder: Any) -> DistributedDataParallel | None:
    if isinstance(encoder, DistributedDataParallel):
        return encoder
    owner = getattr(encoder, "__self__", None)  # a bound method of a DDP module
    return owner if isinstance(owner, DistributedDataParallel) else None


def cached_loss(
    encoder: Callable[[Batch], Any],
    batches: Sequence[Batch],
    loss_fn: Callable[..., torch.Tensor],
    *,
    chunk_size: int,
    encode: Callable[[Callable[[Batch], Any], Batch], torch.Tensor] = default_encode,
    ddp_module: DistributedDataParallel | None = None,
    trim_padding: bool = True,
) -> torch.Tensor:
    """GradCache forward: the loss over the whole batch, whose ``backward()`` re-encodes chunk by chunk.

    Args:
        encoder: any callable mapping a batch (tensor, tokenizer dict, ...) to (rows, d) embeddings or to a
            dict with ``"sentence_embedding"`` (a SentenceTransformer, an ``nn.Module``, a DDP wrapper).
        batches: one batch per input column (e.g. ``[queries, positives, negatives]``); each is embedded
            separately and passed to ``loss_fn`` in this order.
        loss_fn: ``loss_fn(*embeddings) -> scalar`` (e.g. ``lambda q, p: info_nce(q, p)``).
        chunk_size: examples per encoder call; bounds activation memory.
        encode: how to call the encoder on one chunk (default handles tensors and ST dicts).
        ddp_module: the DDP wrapper, if ``encoder`` is not itself one; all chunks but the last replay inside
            ``no_sync()``.
        trim_padding: drop trailing padding columns per chunk (faster; results identical up to rounding).

    Returns:
        The scalar loss. With autograd enabled, calling ``backward()`` on it fills the encoder's (and the
        loss's) parameter gradients as if the batch had been embedded in one go; without autograd it is just
        the loss.

    Example:
        >>> from hardbatch.losses import info_nce
        >>> encoder = torch.nn.Linear(4, 3)
        >>> queries, keys = torch.randn(6, 4), torch.randn(6, 4)
        >>> loss = cached_loss(encoder, [queries, keys], lambda q, k: info_nce(q, k), chunk_size=2)
        >>> loss.backward()
        >>> encoder.weight.grad.shape
        torch.Size([3, 4])
    """
    if not batches:
        raise ConfigError("cached_loss needs at least one batch")
    chunked = [split_batch(batch, chunk_size, trim_padding=trim_padding) for batch in batches]
    grad_enabled = torch.is_grad_enabled()
    replay = _Replay(encoder, encode, ddp_module or _find_ddp(encoder), sum(len(c) for c in chunked), chunked)
    leaves = []
    for chunks in chunked:
        pieces, states = [], []
        for chunk in chunks:
            if grad_enabled:
                states.append(RngState.capture(*_tensors_in(chunk)))
            with torch.no_grad():
                pieces.append(encode(encoder, _fresh(chunk)))
        replay.states.append(states)
        leaves.append(torch.cat(pieces).detach().requires_grad_(grad_enabled))
    loss = loss_fn(*leaves)
    if grad_enabled:
        for column, leaf in enumerate(leaves):
            leaf.register_hook(_column_hook(replay, column))
    return loss


def _column_hook(replay: _Replay, column: int) -> Callable[[torch.Tensor], None]:
    def hook(grad: torch.Tensor) -> None:
        replay.backward_column(column, grad)

    return hook


class GradCache:
    """Training-loop helper: ``loss = GradCache(model, chunk_size).step([q_batch, d_batch], loss_fn)``.

    ``step`` runs :func:`cached_loss` and its backward immediately, leaving the parameter gradients in
    ``.grad`` (accumulated, like ``loss.backward()``), and returns the detached loss.

    Args:
        encoder: the model (or DDP wrapper) mapping a batch to embeddings.
        chunk_size: examples per encoder call.
        encode: see :func:`cached_loss`.

    Example:
        >>> encoder = torch.nn.Linear(4, 3)
        >>> from hardbatch.losses import info_nce
        >>> cache = GradCache(encoder, chunk_size=2)
        >>> loss = cache.step([torch.randn(5, 4), torch.randn(5, 4)], lambda q, k: info_nce(q, k))
        >>> encoder.weight.grad is not None
        True
    """

    def __init__(
        self,
        encoder: Callable[[Batch], Any],
        chunk_size: int,
        *,
        encode: Callable[[Callable[[Batch], Any], Batch], torch.Tensor] = default_encode,
    ) -> None:
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
        self.encoder = encoder
        self.chunk_size = chunk_size
        self.encode = encode

    def step(self, batches: Sequence[Batch], loss_fn: Callable[..., torch.Tensor]) -> torch.Tensor:
        loss = cached_loss(self.encoder, batches, loss_fn, chunk_size=self.chunk_size, encode=self.encode)
        loss.backward()
        return loss.detach()
