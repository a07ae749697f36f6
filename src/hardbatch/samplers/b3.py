"""``B3BatchSampler``: a torch / sentence-transformers batch sampler over a B3 :class:`BatchPlan`.

Each batch is ``batch_size / K`` whole clusters of mutual hard negatives (B3, Thirukovalluru et al.,
NeurIPS 2025). The clusters are mined once (``hardbatch mine b3`` or :func:`hardbatch.mining.mine_b3`)
and regrouped into new batches every epoch with the sampler's seeded, epoch-dependent RNG, so every rank
yields the same stream without communicating. Under data parallelism (``world_size`` P > 1) the sampler
builds *global* batches of ``batch_size · P`` (``global_batches=True``, the paper's setting: one source per
global batch) and yields each as P consecutive per-device slices, so one step trains on one global batch
(see :mod:`hardbatch.samplers.global_batch`).

B3++ (``num_hard_negatives`` = h): :meth:`B3BatchSampler.hard_negatives` returns h · |B| unified hard
negatives per batch (h per example, as in the paper), drawn from the *global* batch's window counts and
split over the ranks like the batch, excluding every member's likely false negatives, and re-drawn every
epoch. Epoch handling, the world-size cut and resumption come from
:class:`~hardbatch.samplers.base.HardBatchSampler`.

Per-epoch cost: O(N) time and memory (cluster shuffle). Mining, when done lazily from embeddings, costs
what :func:`~hardbatch.mining.mine_b3` costs, once, on rank 0 (the plan is broadcast to the other ranks).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hardbatch.distributed import rank0_computes
from hardbatch.errors import ConfigError
from hardbatch.mining.plan import BatchPlan
from hardbatch.samplers.base import HardBatchSampler
from hardbatch.samplers.global_batch import split_global_batches

if TYPE_CHECKING:
    from hardbatch.samplers.factory import SamplerFactory
    from hardbatch.samplers.inputs import SamplerInputs

__all__ = ["B3BatchSampler"]


class B3BatchSampler(HardBatchSampler):
    """Batches made of whole B3 clusters (mutual hard negatives under a teacher).

    Args:
        dataset: the training dataset (sentence-transformers passes it positionally); only its length is
            used, and it must match the plan.
        batch_size: examples per batch, a multiple of the plan's cluster size K.
        drop_last: leave out what does not fill a batch (always when ``world_size > 1``); with ``False`` the
            left-over clusters and the ``N mod K`` remainder are packed into mixed batches at the end.
        valid_label_columns: accepted for sentence-transformers compatibility; unused.
        generator: accepted for sentence-transformers compatibility; randomness comes from ``seed``.
        seed: shuffle seed of the clusters (epoch ``e`` uses ``rng(e)``).
        plan: a :class:`BatchPlan` or the path of a saved one. Give either this or the embeddings.
        query_emb: (N, d) float teacher query embeddings, to mine lazily (on first use).
        positive_emb: (N, d) float teacher positive embeddings, to mine lazily.
        mine_options: keyword arguments of :func:`~hardbatch.mining.mine_b3` for lazy mining
            (``cluster_size``, ``skip``, ``window``, ``knn``, ``sources``...).
        same_source: keep every full batch within one source (default: the plan's setting).
        num_hard_negatives: h, B3++ hard negatives *per example* (:meth:`hard_negatives` returns h · |B|);
            0 (the default) disables.
        global_batches: with ``world_size`` P > 1, mine batches of ``batch_size · P`` and give each rank one
            slice (the paper's global batch; default). ``False``: every rank gets its own independent
            batch of ``batch_size`` (hardbatch before 0.2).
        expected_hash: hash the plan must carry (see :meth:`BatchPlan.check_matches`).
        num_examples: dataset size when no dataset is given.
        world_size: ranks consuming this stream (default: the process group's).

    Example:
        >>> import numpy as np
        >>> from hardbatch.mining import BatchPlan
        >>> plan = BatchPlan(np.arange(64).reshape(8, 8), np.array([], dtype=np.int64), 64,
        ...                  {"cluster_size": 8, "batch_size": 16})
        >>> sampler = B3BatchSampler(num_examples=64, batch_size=16, plan=plan)
        >>> len(list(sampler)), len(sampler)
        (4, 4)
    """

    rng_salt = 0xB3
    mixes_leftovers = True
    uses_plan = True
    #: Batches are made of whole clusters (the batch size must be a multiple of K).
    whole_clusters = True
    #: h when ``num_hard_negatives`` is not given, and the smallest h accepted.
    default_hard_negatives = 0
    min_hard_negatives = 0

    def __init__(
        self,
        dataset: Sequence[Any] | None = None,
        batch_size: int = 32,
        *args: Any,
        plan: BatchPlan | str | os.PathLike[str] | None = None,
        query_emb: np.ndarray | torch.Tensor | None = None,
        positive_emb: np.ndarray | torch.Tensor | None = None,
        mine_options: Mapping[str, Any] | None = None,
        same_source: bool | None = None,
        num_hard_negatives: int | None = None,
        expected_hash: str | Mapping[str, str] | None = None,
        global_batches: bool = True,
        **base: Any,
    ) -> None:
        super().__init__(dataset, batch_size, *args, **base)
        self.same_source = same_source
        if num_hard_negatives is None:
            num_hard_negatives = self.default_hard_negatives
        self.num_hard_negatives = int(num_hard_negatives)
        if self.num_hard_negatives < self.min_hard_negatives:
            raise ConfigError(
                f"{type(self).__name__} needs num_hard_negatives >= {self.min_hard_negatives}, got {num_hard_negatives}"
            )
        self.global_batches = bool(global_batches)
        if self.global_size > self.num_examples:
            raise ConfigError(
                f"the global batch {self.batch_size} × {self.world_size} ranks is larger than the data "
                f"({self.num_examples} examples); use global_batches=False or a smaller batch size"
            )
        self._yielding_epoch: int | None = None
        self._slices: tuple[int, dict[tuple[int, ...], tuple[list[int], int]]] | None = None
        self.mine_options = dict(mine_options or {})
        self._embeddings = None
        if plan is None:
            if query_emb is None or positive_emb is None:
                raise ConfigError(
                    "B3BatchSampler needs a plan or both query_emb and positive_emb to mine one"
                )
            for name, array in (("query_emb", query_emb), ("positive_emb", positive_emb)):
                if len(array) != self.num_examples:
                    raise ConfigError(f"{name} has {len(array)} rows but the dataset has {self.num_examples}")
            self._embeddings = (query_emb, positive_emb)
            cluster_size = int(self.mine_options.get("cluster_size", 32))
        else:
            if not isinstance(plan, BatchPlan):
                plan = BatchPlan.load(
                    plan, expected_num_examples=self.num_examples, expected_hash=expected_hash
                )
            plan.check_matches(num_examples=self.num_examples, expected_hash=expected_hash)
            cluster_size = plan.cluster_size
        if self.whole_clusters and self.batch_size % cluster_size != 0:
            raise ConfigError(
                f"batch_size={self.batch_size} must be a multiple of the cluster size {cluster_size}"
            )
        self._plan: BatchPlan | None = plan
        if self.num_hard_negatives and plan is not None and plan.window is None:
            raise ConfigError("num_hard_negatives needs a plan mined with store_window=True")

    # ----------------------------------------------------------------- construction helpers
    @classmethod
    def input_kwargs(cls, inputs: SamplerInputs, options: Mapping[str, Any]) -> dict[str, Any]:
        """The plan when one is offered, else the teacher's embeddings to mine one lazily."""
        if {"plan", "query_emb", "positive_emb"} & set(options):
            return {}
        plan = inputs.batch_plan()
        if plan is not None:
            return {"plan": plan}
        query_emb, positive_emb = inputs.teacher_embeddings()
        return {"query_emb": query_emb, "positive_emb": positive_emb}

    @classmethod
    def factory(cls, plan: BatchPlan | str | os.PathLike[str] | None = None, **kwargs: Any) -> SamplerFactory:
        """A callable for ``SentenceTransformerTrainingArguments(batch_sampler=...)`` (sentence-transformers >= 5).

        Shorthand for ``sampler_factory("b3", plan=plan, **kwargs)``; see
        :func:`hardbatch.samplers.sampler_factory`.

        Example:
            >>> make = B3BatchSampler.factory(plan="plan.parquet", same_source=False)
            >>> make.options["same_source"]
            False
        """
        from hardbatch.samplers.factory import sampler_factory

        return sampler_factory("b3", plan=plan, **kwargs)

    def group_labels(self) -> np.ndarray:
        """(N,) cluster id of every example (-1 for the ``N mod K`` remainder)."""
        return self.plan.labels()

    @property
    def plan(self) -> BatchPlan:
        """The batch plan (mined on first access when built from embeddings)."""
        if self._plan is None:
            self._plan = self._mine()
        return self._plan

    def _mine(self) -> BatchPlan:
        from hardbatch.mining.b3 import mine_b3

        options = {"seed": self.seed, **self.mine_options, "batch_size": self.batch_size}
        # Mine once on rank 0, so every rank batches from the very same clusters.
        return rank0_computes(lambda: mine_b3(*self._embeddings, **options))

    # ----------------------------------------------------------------- batches
    @property
    def splits_global(self) -> bool:
        """Whether batches are global batches of ``batch_size · world_size`` split over the ranks."""
        return self.global_batches and self.world_size > 1

    @property
    def global_size(self) -> int:
        """Examples per optimiser step over all ranks."""
        return self.batch_size * self.world_size

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        if not self.splits_global:
            return self.plan.batches(
                epoch,
                batch_size=self.batch_size,
                drop_last=self.full_batches_only,
                same_source=self.same_source,
                rng=self.rng(epoch),
            )
        full = self.plan.batches(
            epoch,
            batch_size=self.global_size,
            drop_last=True,
            same_source=self.same_source,
            rng=self.rng(epoch),
        )
        return self._split_global(full, epoch)

    def _split_global(self, full: list[list[int]], epoch: int) -> list[list[int]]:
        """Split each global batch of ``full`` over the ranks, remembering each slice's global batch and rank
        for :meth:`hard_negatives` (per-device batches in rank order, global batch after global batch)."""
        per_device = split_global_batches(full, self.batch_size, self.world_size)
        index = {}
        for g, batch in enumerate(full):
            for rank in range(self.world_size):
                index[tuple(sorted(per_device[g * self.world_size + rank]))] = (batch, rank)
        self._slices = (epoch, index)
        return per_device

    def __len__(self) -> int:
        if self.splits_global:
            return self.world_size * self.plan.num_batches(
                batch_size=self.global_size, drop_last=True, same_source=self.same_source
            )
        count = self.plan.num_batches(
            batch_size=self.batch_size, drop_last=self.full_batches_only, same_source=self.same_source
        )
        return count - count % self.world_size if self.full_batches_only else count

    def hard_negatives(self, batch: Sequence[int], epoch: int | None = None) -> list[int]:
        """B3++ unified hard negatives of ``batch``: ``num_hard_negatives · len(batch)`` example ids.

        h per example, as in the paper: the draw is :meth:`BatchPlan.hard_negatives` over the batch's
        members (under global batches: over the whole global batch, whose ``h · |G|`` negatives are split
        over the ranks in the batch's slice order), excluding every member's likely false negatives, with
        the epoch in the seed so the negatives change from epoch to epoch. Use their positive texts as
        extra negative columns. The draw depends only on (seed, epoch, members), so a collator on any rank
        can call it.

        Args:
            batch: the per-device batch, as yielded.
            epoch: default: the epoch of the batch the sampler yielded last (so a collator called after
                the epoch's final batch, when the sampler has already moved on, still gets its epoch),
                else the current epoch.
        """
        if self.num_hard_negatives <= 0:
            raise ConfigError("this sampler was built with num_hard_negatives=0")
        if epoch is None:
            epoch = self._yielding_epoch if self._yielding_epoch is not None else self.epoch
        epoch = int(epoch)
        h = self.num_hard_negatives
        members, rank = self._global_batch_of(batch, epoch)
        ids = self.plan.hard_negatives(members, h * len(members), epoch=epoch, seed=self.seed)
        if rank is None:
            return ids
        share = h * len(batch)
        return ids[rank * share : (rank + 1) * share]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in super().__iter__():
            self._yielding_epoch = self.epoch
            yield batch

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._yielding_epoch = None

    def _global_batch_of(self, batch: Sequence[int], epoch: int) -> tuple[list[int], int | None]:
        """The global batch holding this per-device slice and the slice's rank (``None``: not global)."""
        if not self.splits_global:
            return list(batch), None
        if self._slices is None or self._slices[0] != epoch:
            self._epoch_batches(epoch)
        found = self._slices[1].get(tuple(sorted(int(i) for i in batch)))  # type: ignore[index]
        if found is None:
            return list(batch), None
        return found

    # ----------------------------------------------------------------- resumption / metadata
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["plan_fingerprint"] = self.plan.fingerprint
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("plan_fingerprint")
        if saved is not None and saved != self.plan.fingerprint:
            raise ConfigError(
                "cannot resume B3BatchSampler: the checkpoint was made with a different batch plan"
            )
        super().load_state_dict(state)

    def get_config_dict(self) -> dict[str, Any]:
        config = super().get_config_dict()
        config.update(
            {
                "same_source": self.same_source,
                "num_hard_negatives": self.num_hard_negatives,
                "global_batches": self.global_batches,
                "plan": self._plan.fingerprint[:16] if self._plan is not None else "lazy",
            }
        )
        return config
