"""Batch samplers: which examples share a batch.

Every sampler derives from :class:`~hardbatch.samplers.base.HardBatchSampler`: deterministic from
(seed, epoch), identical on every rank, full batches only when distributed, self-advancing epochs,
``state_dict`` / ``load_state_dict``, and usable as ``batch_sampler=`` in a torch ``DataLoader`` or in
sentence-transformers (>= 5) through ``functools.partial``::

    from functools import partial
    from hardbatch.samplers import TopicBatchSampler
    args = SentenceTransformerTrainingArguments(
        ..., batch_sampler=partial(TopicBatchSampler, query_emb="teacher/query.npy")
    )

The trainer then calls ``TopicBatchSampler(dataset, batch_size=..., drop_last=..., valid_label_columns=...,
generator=..., seed=...)``.

Registry: :data:`SAMPLERS` maps a name to its class and :func:`build_sampler` instantiates one by name:

========  ==========================================================================
random    :class:`RandomBatchSampler` — uniformly random batches
nodup     :class:`NoDuplicatesBatchSampler` — random, no text repeated within a batch
topic     :class:`TopicBatchSampler` — each batch from one k-means topic (TAS-B)
source    :class:`SourceBatchSampler` — each batch from one data source
gcbs      :class:`GCBSBatchSampler` — GCBS: RCM order of the thresholded similarity graph
b3        ``B3BatchSampler`` — B3: whole clusters of mutual hard negatives (loaded lazily)
random-hn ``RandomHardNegativeBatchSampler`` — random batches + h negatives per query from
          the B3 rank window (the paper's ablation baseline; loaded lazily)
========  ==========================================================================
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from hardbatch.errors import ConfigError
from hardbatch.samplers.base import HardBatchSampler
from hardbatch.samplers.gcbs import GCBSBatchSampler, model_embed_fn
from hardbatch.samplers.nodup import NoDuplicatesBatchSampler
from hardbatch.samplers.random import RandomBatchSampler
from hardbatch.samplers.source import SourceBatchSampler
from hardbatch.samplers.topic import TopicBatchSampler

__all__ = [
    "SAMPLERS",
    "GCBSBatchSampler",
    "HardBatchSampler",
    "NoDuplicatesBatchSampler",
    "RandomBatchSampler",
    "SourceBatchSampler",
    "TopicBatchSampler",
    "build_sampler",
    "model_embed_fn",
]


class _SamplerRegistry(Mapping[str, type]):
    """Name → sampler class; entries given as ``"module:attribute"`` strings are imported on first access.

    Lazy entries keep ``import hardbatch.samplers`` light and independent of optional modules (B3 pulls in
    the graph partitioner).
    """

    def __init__(self, entries: dict[str, type | str]) -> None:
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> type:
        entry = self._entries[name]
        if isinstance(entry, str):
            module, attribute = entry.split(":")
            entry = getattr(importlib.import_module(module), attribute)
            self._entries[name] = entry
        return entry

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"SAMPLERS({', '.join(self._entries)})"


SAMPLERS: Mapping[str, type] = _SamplerRegistry(
    {
        "random": RandomBatchSampler,
        "nodup": NoDuplicatesBatchSampler,
        "topic": TopicBatchSampler,
        "source": SourceBatchSampler,
        "gcbs": GCBSBatchSampler,
        "b3": "hardbatch.samplers.b3:B3BatchSampler",
        "random-hn": "hardbatch.samplers.random_hn:RandomHardNegativeBatchSampler",
    }
)


def build_sampler(name: str, dataset: Any, batch_size: int, **kwargs: Any) -> HardBatchSampler:
    """Instantiate the sampler registered as ``name``.

    Args:
        name: one of :data:`SAMPLERS` (random, nodup, topic, source, gcbs, b3).
        dataset: the training dataset (or ``None`` with ``num_examples=`` for samplers that only need N).
        batch_size: examples per (per-device) batch.
        **kwargs: the sampler's own keyword arguments (``seed``, ``drop_last``, ``world_size``,
            ``query_emb``, ...).

    Example:
        >>> sampler = build_sampler("random", None, 4, num_examples=10, seed=0)
        >>> type(sampler).__name__, len(sampler)
        ('RandomBatchSampler', 2)
    """
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name](dataset, batch_size=batch_size, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "B3BatchSampler":
        return SAMPLERS["b3"]
    if name == "RandomHardNegativeBatchSampler":
        return SAMPLERS["random-hn"]
    raise AttributeError(f"module 'hardbatch.samplers' has no attribute {name!r}")
