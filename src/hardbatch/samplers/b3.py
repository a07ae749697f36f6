"""``B3BatchSampler``: a torch / sentence-transformers batch sampler over a B3 :class:`BatchPlan`.

Each batch is ``batch_size / K`` whole clusters of mutual hard negatives (B3, Thirukovalluru et al.,
NeurIPS 2025). The clusters are mined once (``hardbatch mine b3`` or :func:`hardbatch.mining.mine_b3`)
and regrouped into new batches every epoch with the sampler's seeded, epoch-dependent RNG, so every rank
yields the same stream without communicating. Epoch handling, the world-size cut and resumption come from
:class:`~hardbatch.samplers.base.HardBatchSampler`.

Per-epoch cost: O(N) time and memory (cluster shuffle). Mining, when done lazily from embeddings, costs
what :func:`~hardbatch.mining.mine_b3` costs, once, on rank 0 (the plan is broadcast to the other ranks).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hardbatch.distributed import rank0_computes
from hardbatch.errors import ConfigError
from hardbatch.mining.plan import BatchPlan
from hardbatch.samplers.base import HardBatchSampler

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
        num_hard_negatives: h for :meth:`hard_negatives` (B3++); 0 disables.
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

    def __init__(
        self,
        dataset: Sequence[Any] | None = None,
        batch_size: int = 32,
        drop_last: bool = True,
        valid_label_columns: list[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
        *,
        plan: BatchPlan | str | os.PathLike[str] | None = None,
        query_emb: np.ndarray | torch.Tensor | None = None,
        positive_emb: np.ndarray | torch.Tensor | None = None,
        mine_options: Mapping[str, Any] | None = None,
        same_source: bool | None = None,
        num_hard_negatives: int = 0,
        expected_hash: str | Mapping[str, str] | None = None,
        num_examples: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__(
            dataset,
            batch_size,
            drop_last,
            valid_label_columns,
            generator,
            seed,
            num_examples=num_examples,
            world_size=world_size,
        )
        self.same_source = same_source
        self.num_hard_negatives = int(num_hard_negatives)
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
        if self.batch_size % cluster_size != 0:
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
    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        return self.plan.batches(
            epoch,
            batch_size=self.batch_size,
            drop_last=self.full_batches_only,
            same_source=self.same_source,
            rng=self.rng(epoch),
        )

    def __len__(self) -> int:
        count = self.plan.num_batches(
            batch_size=self.batch_size, drop_last=self.full_batches_only, same_source=self.same_source
        )
        return count - count % self.world_size if self.full_batches_only else count

    def hard_negatives(self, batch: Sequence[int]) -> list[int]:
        """B3++ unified hard negatives of ``batch`` (``num_hard_negatives`` example ids; see
        :meth:`BatchPlan.hard_negatives`). Use their positive texts as extra negative columns. The draw
        depends only on the seed and the batch's members, so a collator on any rank can call it."""
        if self.num_hard_negatives <= 0:
            raise ConfigError("this sampler was built with num_hard_negatives=0")
        return self.plan.hard_negatives(batch, self.num_hard_negatives, seed=self.seed)

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
                "plan": self._plan.fingerprint[:16] if self._plan is not None else "lazy",
            }
        )
        return config
