"""``GroupedBatchSampler``: every batch drawn from one group (a topic cluster, a data source, ...).

The common machinery of :class:`~hardbatch.samplers.topic.TopicBatchSampler` (TAS-B style topic clusters)
and :class:`~hardbatch.samplers.source.SourceBatchSampler` (single-source batches, GritLM / contrastors
practice). Each epoch:

1. every group's members are shuffled and cut into *units* of ``batch_size × world_size`` examples: one
   unit is one global batch, i.e. the ``world_size`` consecutive per-device batches that the ranks train on
   together, so even the gathered (cross-device) negatives come from one group;
2. the units of all groups are shuffled together (a group is then picked in proportion to its remaining
   size, like contrastors' weighted source sampling);
3. what is left of each group (fewer than a unit) is either dropped for this epoch (``leftover="drop"``) or
   pooled, in group order, into mixed batches that join the shuffle (``leftover="mix"``), so every example
   is seen exactly once per epoch apart from the base's usual tail.

Per epoch: O(N) time and memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from hardbatch.errors import ConfigError
from hardbatch.samplers.base import HardBatchSampler

__all__ = ["GroupedBatchSampler"]

Leftover = Literal["drop", "mix"]


class GroupedBatchSampler(HardBatchSampler):
    """Batches whose examples all share a group label.

    Subclasses provide the labels through :meth:`group_labels` (``(N,)`` int64, any values) and may order
    groups (for the mixed leftovers) through :meth:`group_order`.

    Args:
        leftover: ``"drop"`` or ``"mix"`` (see the module docstring).
        other arguments: see :class:`~hardbatch.samplers.base.HardBatchSampler`.
    """

    def __init__(
        self,
        dataset: Sequence[Any] | None = None,
        batch_size: int = 32,
        *args: Any,
        leftover: Leftover = "mix",
        **base: Any,
    ) -> None:
        super().__init__(dataset, batch_size, *args, **base)
        if leftover not in ("drop", "mix"):
            raise ConfigError(f"leftover must be 'drop' or 'mix', got {leftover!r}")
        self.leftover = leftover
        self._groups: list[np.ndarray] | None = None

    # ----------------------------------------------------------------- subclass interface
    def group_labels(self) -> np.ndarray:
        """(N,) group label of every example. Override this."""
        raise NotImplementedError

    def group_order(self, labels: np.ndarray) -> np.ndarray:
        """Order of the distinct labels (sorted unique values) in which leftovers are pooled."""
        return np.arange(len(labels))

    # ----------------------------------------------------------------- batching
    def groups(self) -> list[np.ndarray]:
        """Members (sorted example ids) of every group, in :meth:`group_order`."""
        if self._groups is None:
            labels = np.asarray(self.group_labels())
            if labels.shape != (self.num_examples,):
                raise ConfigError(f"expected {self.num_examples} group labels, got shape {labels.shape}")
            values, inverse = np.unique(labels, return_inverse=True)
            members = np.argsort(inverse, kind="stable")
            bounds = np.cumsum(np.bincount(inverse, minlength=len(values)))[:-1]
            groups = np.split(members, bounds)
            self._groups = [groups[g] for g in self.group_order(values)]
        return self._groups

    @property
    def unit(self) -> int:
        """Examples per global batch: ``batch_size × world_size``."""
        return self.batch_size * self.world_size

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        rng = self.rng(epoch)
        unit, size = self.unit, self.batch_size
        units: list[np.ndarray] = []
        pooled: list[np.ndarray] = []
        for members in self.groups():
            shuffled = members[rng.permutation(members.size)]
            usable = shuffled.size - shuffled.size % unit
            units.extend(shuffled[:usable].reshape(-1, unit))
            pooled.append(shuffled[usable:])
        tail = np.empty(0, dtype=np.int64)
        if self.leftover == "mix":
            pool = np.concatenate(pooled) if pooled else tail
            usable = pool.size - pool.size % unit
            units.extend(pool[:usable].reshape(-1, unit))
            tail = pool[usable:]
        units = [units[i] for i in rng.permutation(len(units))]
        batches = [unit_[start : start + size].tolist() for unit_ in units for start in range(0, unit, size)]
        # The incomplete last unit comes at the end so every earlier unit stays aligned with a rank round.
        batches.extend(tail[start : start + size].tolist() for start in range(0, tail.size, size))
        return batches

    def __len__(self) -> int:
        sizes = np.array([g.size for g in self.groups()], dtype=np.int64)
        if self.leftover == "mix":
            return super().__len__()
        return int((sizes // self.unit).sum()) * self.world_size

    def get_config_dict(self) -> dict[str, Any]:
        return {**super().get_config_dict(), "leftover": self.leftover}
