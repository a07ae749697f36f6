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

Re-mining with the student (``remine_every`` = E): at the start of every epoch e ≥ E with e mod E = 0 the
sampler re-embeds the training pairs with the live model (``embed_fn``, called on every rank; see
:func:`~hardbatch.samplers.gcbs.model_embed_fn`, which deals the forward passes out over the ranks),
re-mines the plan with the same mining options (the original plan's parameters, or ``mine_options``) on
rank 0 from rank 0's embeddings, broadcasts it, and batches epochs e … e + E − 1
from it. The plan of epoch e is a function of (mining seed, e, the weights at the start of epoch e);
``state_dict`` carries the re-mined plan (plain lists), so a resumed run batches exactly as the interrupted one.

Per-epoch cost: O(N) time and memory (cluster shuffle). Mining, when done lazily from embeddings, costs
what :func:`~hardbatch.mining.mine_b3` costs, once, on rank 0 (the plan is broadcast to the other ranks);
each re-mine costs one embedding pass over the 2N texts plus one ``mine_b3`` (rank 0), and the sampler state
grows by O(N) (O(N · m) more with B3++, whose windows it carries).
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
    from hardbatch.samplers.gcbs import EmbedFn
    from hardbatch.samplers.inputs import SamplerInputs

#: Mining parameters recorded in a plan's ``params`` that :func:`~hardbatch.mining.mine_b3` takes back as
#: keyword arguments when the sampler re-mines that plan with the student.
_REMINE_PARAMS = (
    "cluster_size",
    "skip",
    "window",
    "count_self",
    "community",
    "label_fraction",
    "seed",
    "knn",
    "normalize",
    "same_source",
    "absolute_margin",
    "relative_margin",
    "max_score",
    "faiss_options",
    "precision",
    "recall_target",
    "key_block_size",  # recorded only when the plan was mined with key blocks (mining.b3.KEY_BLOCK_OPTIONS)
    "memory_budget",
)

#: ``mine_b3`` options that change how a re-mine runs, never its plan (the exact kNN's answer is the same in
#: every precision and key-block size): with a plan, ``mine_options`` may set only these, for its re-mines.
_RESOURCE_OPTIONS = ("precision", "key_block_size", "memory_budget", "device", "chunk_size", "show_progress")

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
            (``cluster_size``, ``skip``, ``window``, ``knn``, ``sources``, ``precision``...), re-used by
            re-mines. ``key_block_size`` (B, or "auto") and ``memory_budget`` ("4GiB") bound the exact kNN's
            memory as in ``mine_b3`` (same plan); they are checked here, a budget too small for the kNN's
            smallest key block included. A plan mined with them re-mines with them too. With a ``plan``,
            only options that change how its re-mines run, not their result, are accepted (``precision``,
            ``key_block_size``, ``memory_budget``, ``device``, ``chunk_size``, ``show_progress``); they
            override the plan's recorded ones; any other is a ConfigError (the plan's own are used).
        same_source: keep every full batch within one source (default: the plan's setting).
        num_hard_negatives: h, B3++ hard negatives *per example* (:meth:`hard_negatives` returns h · |B|);
            0 (the default) disables.
        global_batches: with ``world_size`` P > 1, mine batches of ``batch_size · P`` and give each rank one
            slice (the paper's global batch; default). ``False``: every rank gets its own independent
            batch of ``batch_size`` (hardbatch before 0.2).
        expected_hash: hash the plan must carry (see :meth:`BatchPlan.check_matches`).
        num_examples: dataset size when no dataset is given.
        world_size: ranks consuming this stream (default: the process group's).
        remine_every: E >= 1: re-embed the pairs with ``embed_fn`` (the student) and re-mine the plan at the
            start of epochs E, 2E, ... with the same mining options; ``None`` (default): a static plan.
        embed_fn: ``embed_fn(epoch) -> (query_emb, positive_emb)``, each (N, d) float, for
            ``remine_every`` (normally :func:`~hardbatch.samplers.gcbs.model_embed_fn` of the live model;
            :meth:`input_kwargs` builds it from ``SamplerInputs.model``).

    Raises:
        ConfigError: no plan and no embeddings; ``remine_every`` < 1 or without ``embed_fn``; a plan that
            cannot be re-mined (not mined by ``mine_b3``, or hierarchical); bad key-block options of the
            mining to come (:func:`~hardbatch.mining.b3.check_key_blocks`).

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
        remine_every: int | None = None,
        embed_fn: EmbedFn | None = None,
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
            ignored = sorted(set(self.mine_options) - set(_RESOURCE_OPTIONS))
            if ignored:
                raise ConfigError(
                    f"mine_options {ignored} cannot apply to a given plan (it was mined with its own "
                    f"parameters, which its re-mines reuse); with a plan, mine_options may only set "
                    f"{', '.join(_RESOURCE_OPTIONS)}"
                )
        if self.whole_clusters and self.batch_size % cluster_size != 0:
            raise ConfigError(
                f"batch_size={self.batch_size} must be a multiple of the cluster size {cluster_size}"
            )
        self._plan: BatchPlan | None = plan
        if self.num_hard_negatives and plan is not None and plan.window is None:
            raise ConfigError("num_hard_negatives needs a plan mined with store_window=True")
        if remine_every is not None:
            if isinstance(remine_every, bool) or int(remine_every) != remine_every or remine_every < 1:
                raise ConfigError(f"remine_every must be an integer >= 1 (epochs), got {remine_every!r}")
            if embed_fn is None:
                raise ConfigError(
                    "remine_every needs embed_fn (the model being trained) to re-embed the training pairs"
                )
            if plan is not None:
                _check_reminable(plan)
        elif embed_fn is not None:
            raise ConfigError("embed_fn is used only with remine_every")
        self.remine_every = int(remine_every) if remine_every is not None else None
        self.embed_fn = embed_fn
        self._check_key_blocks(plan, query_emb)
        #: ``(epoch it was mined for, plan)`` of the latest re-mine, ``None`` before the first.
        self._remined: tuple[int, BatchPlan] | None = None
        self._active: BatchPlan | None = None
        #: Re-mines performed over the run (restored from checkpoints).
        self.remine_count = 0
        #: Statistics of every re-mine, in order (``{"epoch", "seconds", "cluster_mean_sim", ...}``).
        self.remine_history: list[dict[str, Any]] = []

    # ----------------------------------------------------------------- construction helpers
    def _recorded_options(self, plan: BatchPlan) -> dict[str, Any]:
        """The plan's recorded mining parameters, with ``mine_options``' resource options (checked in
        ``__init__``) on top.

        The key-block pair is replaced as a whole: a budget given here must not meet the plan's block size.
        """
        options = {key: plan.params[key] for key in _REMINE_PARAMS if key in plan.params}
        if {"key_block_size", "memory_budget"} & set(self.mine_options):
            options.pop("key_block_size", None)
            options.pop("memory_budget", None)
        options.update(self.mine_options)
        return options

    def _check_key_blocks(self, plan: BatchPlan | None, query_emb: Any) -> None:
        """Key-block options of the mining to come (lazy, or re-mines) checked now, not at its start.

        The budget is checked against the largest source group's kNN (O(N) for the counts), with d of the
        teacher embeddings; a re-mine's d (the student's) is not known yet: a one-dimensional stand-in
        then finds the budgets too small for any d.
        """
        from hardbatch.mining.b3 import check_key_blocks

        if plan is None:
            options, dim = self.mine_options, int(query_emb.shape[1])
            sources = options.get("sources")
            codes = (
                None if sources is None else np.unique(np.asarray(sources, dtype=str), return_inverse=True)[1]
            )
        elif self.remine_every is not None:
            options, dim, codes = self._recorded_options(plan), 1, plan.example_sources()
        else:
            return  # a static plan: nothing will be mined
        largest = self.num_examples if codes is None else int(np.bincount(np.ravel(codes)).max())
        check_key_blocks(options, num_keys=largest, dim=dim)

    @classmethod
    def input_kwargs(cls, inputs: SamplerInputs, options: Mapping[str, Any]) -> dict[str, Any]:
        """The plan when one is offered, else the teacher's embeddings to mine one lazily; with
        ``remine_every`` also an ``embed_fn`` of the live model."""
        kwargs: dict[str, Any] = {}
        if not {"plan", "query_emb", "positive_emb"} & set(options):
            plan = inputs.batch_plan()
            if plan is not None:
                kwargs["plan"] = plan
            else:
                kwargs["query_emb"], kwargs["positive_emb"] = inputs.teacher_embeddings()
        if options.get("remine_every") is not None and "embed_fn" not in options:
            if inputs.model is None or inputs.dataset is None:
                raise ConfigError(
                    "remine_every re-embeds the training pairs with the model being trained: give the "
                    "model and the training dataset"
                )
            from hardbatch.samplers.gcbs import model_embed_fn

            kwargs["embed_fn"] = model_embed_fn(
                inputs.model, inputs.dataset, batch_size=inputs.embed_batch_size, device=inputs.device
            )
        return kwargs

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
        """The plan batched from last (the re-mined one after a re-mine), else the original plan."""
        return self._active if self._active is not None else self.base_plan

    @property
    def base_plan(self) -> BatchPlan:
        """The original plan (mined on first access when built from embeddings); checkpoints name it."""
        if self._plan is None:
            self._plan = self._mine()
            if self.remine_every is not None:
                _check_reminable(self._plan)
        return self._plan

    def _mine(self) -> BatchPlan:
        from hardbatch.mining.b3 import mine_b3

        options = {"seed": self.seed, **self.mine_options, "batch_size": self.batch_size}
        # Mine once on rank 0, so every rank batches from the very same clusters.
        return rank0_computes(lambda: mine_b3(*self._embeddings, **options))

    # ----------------------------------------------------------------- re-mining with the student
    def remine_epoch(self, epoch: int) -> int | None:
        """The epoch whose start-of-epoch weights mined the plan of ``epoch`` (``None``: the original plan)."""
        if self.remine_every is None or epoch < self.remine_every:
            return None
        return (int(epoch) // self.remine_every) * self.remine_every

    def plan_for(self, epoch: int, *, mine: bool = True) -> BatchPlan:
        """The plan that batches ``epoch``, re-mining with ``embed_fn`` first when it is due.

        With ``mine=False`` a due re-mine is not run and the latest plan is returned instead.
        """
        target = self.remine_epoch(epoch)
        if target is None:
            return self.base_plan
        if self._remined is not None and self._remined[0] == target:
            return self._remined[1]
        if not mine:
            return self.plan
        plan = self._remine(target)
        self._remined = (target, plan)
        self.remine_count += 1
        return plan

    def remine_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~hardbatch.mining.mine_b3` for a re-mine: the original plan's."""
        if self._embeddings is not None:  # mined lazily here: the same options again
            return {"seed": self.seed, **self.mine_options, "batch_size": self.batch_size}
        plan = self.base_plan
        params = plan.params
        options = {**self._recorded_options(plan), "batch_size": self.batch_size}
        if plan.has_sources:
            names = np.asarray(plan.source_names, dtype=object)
            options["sources"] = names[plan.example_sources()].tolist()
        classification = list(params.get("classification") or [])
        if classification:  # source names, or ["*"] for a plan mined without sources
            options["classification"] = classification if plan.has_sources else True
        if params.get("filter_same_text"):
            from hardbatch.samplers._data import query_positive_texts

            if self.dataset is None or isinstance(self.dataset, range):
                raise ConfigError("re-mining a plan mined with positive_texts needs the training dataset")
            options["positive_texts"] = list(query_positive_texts(self.dataset)[1])
        options["store_window"] = plan.window is not None
        options["store_neighbors"] = False
        return options

    def _remine(self, epoch: int) -> BatchPlan:
        import time

        from hardbatch.mining.b3 import mine_b3

        options = self.remine_options()
        assert self.embed_fn is not None

        started = time.perf_counter()
        # Every rank calls embed_fn: model_embed_fn is a collective that shares the forward passes out.
        query_emb, positive_emb = self.embed_fn(epoch)
        if len(query_emb) != self.num_examples or len(positive_emb) != self.num_examples:
            raise ConfigError(
                f"embed_fn returned {len(query_emb)} query and {len(positive_emb)} positive rows for a "
                f"dataset of {self.num_examples} examples"
            )
        # Mined once, from rank 0's rows, so every rank batches from the very same clusters.
        plan = rank0_computes(lambda: mine_b3(query_emb, positive_emb, **options))
        hardness = plan.stats.get("hardness", {})
        self.remine_history.append(
            {"epoch": int(epoch), "seconds": round(time.perf_counter() - started, 3), **hardness}
        )
        return plan

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
        self._active = self.plan_for(epoch)
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
        plan = self.plan_for(epoch, mine=False)
        ids = plan.hard_negatives(members, h * len(members), epoch=epoch, seed=self.seed)
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
        """Base state, the original plan's fingerprint and, after a re-mine, the re-mined plan (plain lists)."""
        state = super().state_dict()
        state["plan_fingerprint"] = self.base_plan.fingerprint
        if self.remine_every is not None:
            state["remine"] = {"count": int(self.remine_count)}
            if self._remined is not None:
                state["remine"]["epoch"] = int(self._remined[0])
                state["remine"]["plan"] = _plan_state(self._remined[1], windows=self.num_hard_negatives > 0)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("plan_fingerprint")
        if saved is not None and saved != self.base_plan.fingerprint:
            raise ConfigError(
                "cannot resume B3BatchSampler: the checkpoint was made with a different batch plan"
            )
        remine = state.get("remine")
        if remine is not None and self.remine_every is None:
            raise ConfigError("cannot resume B3BatchSampler: the checkpoint re-mined its plan (remine_every)")
        super().load_state_dict(state)
        if remine is not None:
            self.remine_count = int(remine.get("count", 0))
            if "plan" in remine:
                plan = _plan_from_state(remine["plan"], self.num_examples)
                self._remined = (int(remine["epoch"]), plan)

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
        if self.remine_every is not None:
            config["remine_every"] = self.remine_every
            config["remines"] = self.remine_count
        return config


def _check_reminable(plan: BatchPlan) -> None:
    """Raise :class:`ConfigError` when ``plan`` cannot be re-mined with :func:`~hardbatch.mining.mine_b3`."""
    if plan.params.get("method", "b3") != "b3":
        raise ConfigError(f"remine_every re-mines B3 plans; this plan was mined by {plan.params['method']!r}")
    if "hierarchical" in plan.params:
        raise ConfigError("remine_every cannot re-mine a hierarchical plan (mine_b3_hierarchical) yet")


def _csr_state(matrix: Any) -> dict[str, list] | None:
    if matrix is None:
        return None
    return {
        "indptr": matrix.indptr.tolist(),
        "indices": matrix.indices.tolist(),
        "data": matrix.data.tolist(),
    }


def _csr_from_state(state: Mapping[str, list] | None, n: int) -> Any:
    if state is None:
        return None
    import scipy.sparse as sp

    return sp.csr_array((state["data"], state["indices"], state["indptr"]), shape=(n, n))


def _plan_state(plan: BatchPlan, windows: bool) -> dict[str, Any]:
    """A re-mined plan as plain lists / dicts (checkpoints are loaded with ``weights_only=True``)."""

    def as_list(array: np.ndarray | None) -> list | None:
        return None if array is None else np.asarray(array).tolist()

    return {
        "clusters": as_list(plan.clusters),
        "remainder": as_list(plan.remainder),
        "params": dict(plan.params),
        "hashes": dict(plan.hashes),
        "cluster_sources": as_list(plan.cluster_sources),
        "remainder_sources": as_list(plan.remainder_sources),
        "source_names": list(plan.source_names) if plan.source_names is not None else None,
        "window": _csr_state(plan.window) if windows else None,
        "skipped": _csr_state(plan.skipped) if windows else None,
    }


def _plan_from_state(state: Mapping[str, Any], num_examples: int) -> BatchPlan:
    params = dict(state["params"])
    clusters = np.asarray(state["clusters"], dtype=np.int64).reshape(-1, int(params["cluster_size"]))
    return BatchPlan(
        clusters=clusters,
        remainder=np.asarray(state["remainder"], dtype=np.int64),
        num_examples=num_examples,
        params=params,
        hashes=dict(state.get("hashes") or {}),
        cluster_sources=state.get("cluster_sources"),
        remainder_sources=state.get("remainder_sources"),
        source_names=state.get("source_names"),
        window=_csr_from_state(state.get("window"), num_examples),
        skipped=_csr_from_state(state.get("skipped"), num_examples),
    )
