"""``NoDuplicatesBatchSampler``: random batches in which no text (query, positive or negative) repeats.

With in-batch negatives, a text that appears twice in a batch is a false negative: the loss pushes an
example away from its own copy. This sampler follows the semantics of sentence-transformers'
``NoDuplicatesBatchSampler``: walk a random permutation and add a row to the current batch only if none of
its texts is already in the batch; a skipped row waits (in permutation order) and is offered to the next
batches first.

Faster than the sentence-transformers version: every text is mapped to an integer id once (a dict over the
dataset's texts), rows whose texts are all unique in the dataset skip the check altogether, and the check
itself is a set lookup on small integers. Texts are read column-wise, never by decoding rows.

Remainder: once the permutation is exhausted, batches are built from the waiting rows alone; one that
cannot be filled is a short batch. sentence-transformers emits every such short batch; our samplers emit at
most one (the last), so the rows of earlier short batches sit out the epoch, and with ``drop_last`` or
``world_size > 1`` the last short batch too. Without duplicate texts this is exactly the random sampler's
remainder; with heavy duplication (a text shared by many rows) it can be large: each batch can hold only one
of the rows sharing a text.

Cost: building the ids is O(total texts) once; an epoch is O(N + Σ waiting rows scanned), which is O(N) unless
a text is shared by a large fraction of the rows (then each batch can take only one of them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hardbatch.errors import ConfigError
from hardbatch.ids import stable_ids
from hardbatch.samplers._data import dataset_text_columns
from hardbatch.samplers.base import HardBatchSampler

__all__ = ["NoDuplicatesBatchSampler", "text_ids"]


def text_ids(columns: list[list[list[str]]]) -> tuple[np.ndarray, np.ndarray]:
    """Integer ids of every row's distinct texts, as CSR: row i owns ``ids[indptr[i]:indptr[i + 1]]``.

    Args:
        columns: ``columns[c][i]`` = list of texts of row i in column c (see ``dataset_text_columns``).

    Returns:
        ``(indptr (N + 1,) int64, ids (total,) int64)``; equal texts get equal ids.
    """
    n = len(columns[0]) if columns else 0
    rows = [sorted({text for column in columns for text in column[i]}) for i in range(n)]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(row) for row in rows], out=indptr[1:])
    hashed = stable_ids(text for row in rows for text in row)
    # Dense ids (0..distinct-1) so callers can count them with bincount.
    return indptr, np.unique(hashed, return_inverse=True)[1].astype(np.int64).reshape(-1)


class NoDuplicatesBatchSampler(HardBatchSampler):
    """Random batches without a repeated text (sentence-transformers' no-duplicates semantics, on our base).

    Args:
        dataset: a PairDataset, ``datasets.Dataset`` or sequence of dicts; every non-label column counts
            (``id``, ``source`` and ``dataset_name`` are ignored).
        batch_size, drop_last, valid_label_columns, generator, seed, world_size:
            see :class:`~hardbatch.samplers.base.HardBatchSampler`.

    Example:
        >>> rows = [{"query": q, "positive": p} for q, p in [("a", "x"), ("a", "y"), ("b", "z"), ("c", "x")]]
        >>> batches = NoDuplicatesBatchSampler(rows, batch_size=2, drop_last=False).batches(0)
        >>> all(len({rows[i]["query"] for i in b}) == len(b) for b in batches)
        True
    """

    rng_salt = 0xD0D

    def __init__(self, dataset: Sequence[Any], batch_size: int = 32, *args: Any, **base: Any) -> None:
        if dataset is None:
            raise ConfigError("NoDuplicatesBatchSampler needs the dataset (it reads the texts)")
        super().__init__(dataset, batch_size, *args, **base)
        self._indptr, self._ids = text_ids(dataset_text_columns(dataset, self.valid_label_columns))
        counts = np.bincount(self._ids) if self._ids.size else np.zeros(0, dtype=np.int64)
        row_of_id = np.repeat(np.arange(self.num_examples), np.diff(self._indptr))
        shared = np.zeros(self.num_examples, dtype=bool)
        np.logical_or.at(shared, row_of_id, counts[self._ids] > 1)
        # Rows whose texts occur nowhere else can never collide: they skip the set check.
        self._shared = shared
        self._cache: tuple[int, list[list[int]]] | None = None

    @property
    def num_rows_with_shared_text(self) -> int:
        """Rows that share at least one text with another row (the only ones that can be deferred)."""
        return int(self._shared.sum())

    def _row_ids(self, row: int) -> np.ndarray:
        return self._ids[self._indptr[row] : self._indptr[row + 1]]

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        order = self.rng(epoch).permutation(self.num_examples).tolist()
        batches: list[list[int]] = []
        waiting: list[int] = []
        short: list[int] = []
        cursor = 0
        size = self.batch_size
        while cursor < len(order) or waiting:
            batch: list[int] = []
            used: set[int] = set()
            still_waiting: list[int] = []
            for row in waiting:  # deferred rows first, in permutation order (as sentence-transformers)
                if len(batch) < size and self._fits(row, used):
                    batch.append(row)
                else:
                    still_waiting.append(row)
            while len(batch) < size and cursor < len(order):
                row = order[cursor]
                cursor += 1
                if self._fits(row, used):
                    batch.append(row)
                else:
                    still_waiting.append(row)
            waiting = still_waiting
            if not batch:
                break
            if len(batch) == size:
                batches.append(batch)
            else:
                # The stream is exhausted and the waiting rows conflict with this batch. As in
                # sentence-transformers, go on building batches from the rows still waiting; only the last
                # short batch is kept (our samplers emit at most one), earlier ones sit out this epoch.
                short = batch
        if short:
            batches.append(short)
        self._cache = (epoch, batches)
        return batches

    def _fits(self, row: int, used: set[int]) -> bool:
        if not self._shared[row]:
            return True
        ids = self._row_ids(row).tolist()
        if any(i in used for i in ids):
            return False
        used.update(ids)
        return True

    def __len__(self) -> int:
        return len(self.batches(self.epoch))
