"""``SourceBatchSampler``: every batch (every global batch under DDP) from a single data source.

Large embedding models (GritLM, nomic contrastors, Arctic-embed, BGE's ``same_dataset_within_batch``)
train with source-homogeneous batches: mixing sources lets the model separate in-batch negatives by
source-specific surface cues (format, language, length) instead of meaning. Contrastors fills each whole
global batch from one source and rounds every source down to whole batches; this sampler does the same by
default (``leftover="drop"``: up to ``batch_size × world_size - 1`` examples per source sit out each epoch,
a different random set every epoch). ``leftover="mix"`` pools them into mixed batches instead.

Sources come from ``dataset.sources`` (a PairDataset), the dataset's ``source`` column, or ``sources=``.

Per epoch: O(N) time and memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hardbatch.errors import ConfigError
from hardbatch.samplers._data import dataset_sources
from hardbatch.samplers.grouped import GroupedBatchSampler, Leftover

__all__ = ["SourceBatchSampler"]


class SourceBatchSampler(GroupedBatchSampler):
    """Single-source batches; sources are picked in proportion to their remaining number of batches.

    Args:
        dataset: the training dataset (its ``sources`` / ``column`` column is read unless ``sources`` is
            given).
        batch_size, drop_last, valid_label_columns, generator, seed, num_examples, world_size: see
            :class:`~hardbatch.samplers.base.HardBatchSampler`.
        sources: (N,) source name of every example.
        column: dataset column holding the source (default ``"source"``).
        leftover: ``"drop"`` (default) or ``"mix"``.

    Example:
        >>> sampler = SourceBatchSampler(num_examples=12, batch_size=3, sources=["a"] * 6 + ["b"] * 6)
        >>> sorted({("a" if i < 6 else "b") for i in b}.pop() for b in sampler.batches(0))
        ['a', 'a', 'b', 'b']
    """

    rng_salt = 0x50C

    def __init__(
        self,
        dataset: Sequence[Any] | None = None,
        batch_size: int = 32,
        *args: Any,
        sources: Sequence[str] | np.ndarray | None = None,
        column: str = "source",
        leftover: Leftover = "drop",
        **base: Any,
    ) -> None:
        super().__init__(dataset, batch_size, *args, leftover=leftover, **base)
        if sources is None:
            sources = dataset_sources(dataset, column)
        if sources is None:
            raise ConfigError(
                f"SourceBatchSampler needs sources: the dataset has no '{column}' column (give sources=)"
            )
        names = np.asarray([str(s) for s in sources])
        if names.shape != (self.num_examples,):
            raise ConfigError(f"sources: expected {self.num_examples} values, got {names.size}")
        self.source_names, self._codes = np.unique(names, return_inverse=True)
        if self.leftover == "drop" and len(self) == 0:
            raise ConfigError(
                f"no source has {self.unit} examples (batch_size × world_size), so no single-source batch "
                "can be formed; lower the batch size or use leftover='mix'"
            )

    def group_labels(self) -> np.ndarray:
        return self._codes.astype(np.int64)

    def source_counts(self) -> dict[str, int]:
        """Examples per source."""
        return dict(zip(self.source_names.tolist(), np.bincount(self._codes).tolist()))
