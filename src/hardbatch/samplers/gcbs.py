"""``GCBSBatchSampler``: Global Contrastive Batch Sampling, refreshed before every epoch.

Before each epoch the sampler asks ``embed_fn(epoch)`` for query and positive embeddings of the whole
training set — normally computed by *the model being trained* (see :func:`model_embed_fn`) — and runs
:func:`hardbatch.mining.gcbs.mine_gcbs`: thresholded similarity graph → reverse Cuthill–McKee order →
consecutive batches. Fixed embeddings (``query_emb`` / ``positive_emb``, a frozen teacher) are the
alternative: the graph is then the same every epoch and only the batch boundaries (``random_offset``) and
the order of the batches (``shuffle_batches``) change.

Distributed training: every rank runs the refresh; when a process group is initialised, rank 0's batches
are broadcast (``sync_ranks=True``) so a difference in floating-point results between ranks cannot make
them disagree. Resumption: ``state_dict`` stores the current epoch's batch order, so a resumed run yields
exactly the rest of the epoch although the model (and thus a recomputed graph) has changed.

Cost per epoch: the embedding pass (caller) + O(N² · d) similarity pass + O(N + nnz) memory; see
:mod:`hardbatch.mining.gcbs`.

sentence-transformers (>= 5) usage — the trainer builds the sampler with ``(dataset, batch_size, drop_last,
valid_label_columns, generator, seed)``; bind the rest with ``functools.partial``::

    from functools import partial
    embed_fn = model_embed_fn(model, train_pairs, max_seq_length=128)
    args = SentenceTransformerTrainingArguments(
        ..., batch_sampler=partial(GCBSBatchSampler, embed_fn=embed_fn, target_degree=64)
    )
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hardbatch.device import resolve_device
from hardbatch.distributed import broadcast_from_rank0
from hardbatch.embed.cache import as_embeddings
from hardbatch.errors import ConfigError, HardbatchError
from hardbatch.graph.ivf import check_layout_options
from hardbatch.graph.precision import resolve_precision
from hardbatch.graph.threshold import DEFAULT_QUANTILE_SAMPLE
from hardbatch.mining.gcbs import GRAPH_METHODS, GCBSResult, gcbs_key_block, mine_gcbs
from hardbatch.samplers._data import query_positive_texts
from hardbatch.samplers.base import HardBatchSampler
from hardbatch.samplers.global_batch import split_global_batches

if TYPE_CHECKING:
    from hardbatch.samplers.inputs import SamplerInputs

__all__ = ["EmbedFn", "GCBSBatchSampler", "model_embed_fn"]

logger = logging.getLogger(__name__)

#: ``embed_fn(epoch) -> (query_emb (N, d), positive_emb (N, d))``.
EmbedFn = Callable[[int], tuple[Any, Any]]


def model_embed_fn(
    model: Any,
    dataset: Any,
    *,
    batch_size: int = 64,
    max_seq_length: int | None = None,
    device: str | None = "auto",
) -> EmbedFn:
    """An ``embed_fn`` that encodes ``dataset.queries`` and ``dataset.positives`` with ``model`` (no grad).

    The model is encoded as it is at call time (the sampler calls at the start of each epoch), without a
    cache (the weights change between epochs); its training mode is restored afterwards. In one process
    this is :func:`hardbatch.embed.encode_texts`. Under an initialised torch.distributed group it is a
    collective (every rank calls it, as the samplers do): each rank runs 1/W of the forward passes and the
    rows are all-gathered (:func:`hardbatch.embed.sharded.encode_sharded`), so re-embedding the training
    set costs each of the W ranks 1/W of the single-process time, and every rank gets all N rows.

    Args:
        model: a ``SentenceTransformer`` (the one being trained) or anything ``encode_texts`` accepts.
        dataset: a PairDataset, or a ``datasets.Dataset`` whose first two columns are query and positive.
        batch_size: texts per forward pass.
        max_seq_length: truncate inputs (None: the model's setting).
        device: where to encode.
    """
    queries, positives = query_positive_texts(dataset)

    def embed(epoch: int) -> tuple[np.ndarray, np.ndarray]:
        from hardbatch.embed.encode import resolve_encoder
        from hardbatch.embed.sharded import encode_sharded

        def get_encoder() -> tuple[Any, str | None]:
            return resolve_encoder(model, device)

        options = {"model_info": None, "batch_size": batch_size, "max_seq_length": max_seq_length}
        return encode_sharded(queries, get_encoder, **options), encode_sharded(
            positives, get_encoder, **options
        )

    return embed


class GCBSBatchSampler(HardBatchSampler):
    """GCBS batches: RCM order of the thresholded query × positive similarity graph, cut into batches.

    Args:
        dataset: the training dataset (only its length is used; may be ``None`` with ``num_examples``).
        batch_size, drop_last, valid_label_columns, generator, seed, num_examples, world_size: see
            :class:`~hardbatch.samplers.base.HardBatchSampler`.
        embed_fn: ``embed_fn(epoch) -> (query_emb, positive_emb)``, each (N, d) float, called once at the
            start of every epoch (normally the model being trained, see :func:`model_embed_fn`).
        query_emb: fixed (N, d) query embeddings (array, tensor or ``.npy`` path) instead of ``embed_fn``.
        positive_emb: fixed (N, d) positive embeddings, with ``query_emb``.
        quantile: global similarity quantile q used as threshold (default 0.999, the paper's).
        target_degree: alternative to ``quantile``: about this many graph edges per example.
        shuffle_batches: shuffle the order of the batches (not their content) every epoch. RCM puts similar
            batches next to each other; without shuffling consecutive steps see the same topic.
        random_offset: move the batch boundaries by a random offset every epoch.
        sample_size: similarity entries used to estimate the quantile.
        chunk_size: rows per similarity block.
        device: torch device for the similarity pass.
        sync_ranks: broadcast rank 0's batches when a process group is initialised.
        collapse_fraction: warn when one component holds more than this fraction of the examples.
        graph_method: ``"exact"`` similarity pass, ``"ivf_torch"`` (grouped IVF search at matmul speed,
            approximate, ``nprobe`` calibrated to ``recall_target`` at every refresh; for large N) or ``"ivf"``
            (faiss range search, approximate). See :func:`hardbatch.mining.mine_gcbs`.
        nlist: IVF lists (None: about sqrt(N) for ``"ivf_torch"``, 4·sqrt(N) for ``"ivf"``).
        nprobe: IVF lists searched per example (None: calibrated for ``"ivf_torch"``, 32 for ``"ivf"``).
        recall_target: the edge recall the ``"ivf_torch"`` calibration reaches (default 0.95).
        precision: matmul precision of the exact graph pass: "auto" (bf16 where fast), "fp32" or "bf16";
            the graph is the fp32 one either way.
        key_block_size: positives resident at a time in the exact graph pass (None: all of them; "auto":
            chosen from ``memory_budget``); the batches are the unblocked ones, and the pass holds
            O(B·d + chunk_size·B) instead of O(N·d + chunk_size·N) (see :func:`~hardbatch.mining.mine_gcbs`).
            ``last_stats`` records the ``key_block_size`` and ``key_blocks`` used.
        memory_budget: bytes (or "4GiB", "512MiB") for the graph pass's key, row and score blocks; alone it
            means ``key_block_size="auto"``, the largest block that fits, chosen at every refresh.
        global_batches: with ``world_size`` P > 1, cut the RCM order into global batches of
            ``batch_size · P`` (one contiguous chunk per optimiser step) and give each rank one slice
            (default). ``False``: consecutive per-device chunks go to different ranks (before 0.2).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> q = np.repeat(rng.normal(size=(8, 16)), 32, axis=0) + 0.1 * rng.normal(size=(256, 16))
        >>> sampler = GCBSBatchSampler(num_examples=256, batch_size=32, query_emb=q, positive_emb=q,
        ...                            target_degree=31, device="cpu")
        >>> len(list(sampler)), sampler.last_stats["same_batch_edge_fraction"] > 0.5
        (8, True)
    """

    rng_salt = 0x6CB5

    def __init__(
        self,
        dataset: Sequence[Any] | None = None,
        batch_size: int = 32,
        *args: Any,
        embed_fn: EmbedFn | None = None,
        query_emb: np.ndarray | torch.Tensor | str | os.PathLike[str] | None = None,
        positive_emb: np.ndarray | torch.Tensor | str | os.PathLike[str] | None = None,
        quantile: float | None = None,
        target_degree: float | None = None,
        shuffle_batches: bool = True,
        random_offset: bool = True,
        sample_size: int = DEFAULT_QUANTILE_SAMPLE,
        chunk_size: int = 2048,
        device: str | torch.device | None = "auto",
        sync_ranks: bool = True,
        collapse_fraction: float = 0.9,
        graph_method: str = "exact",
        nlist: int | None = None,
        nprobe: int | None = None,
        recall_target: float = 0.95,
        precision: str = "auto",
        key_block_size: int | str | None = None,
        memory_budget: int | str | None = None,
        global_batches: bool = True,
        **base: Any,
    ) -> None:
        super().__init__(dataset, batch_size, *args, **base)
        fixed = query_emb is not None or positive_emb is not None
        if (embed_fn is None) == (not fixed) or (fixed and (query_emb is None or positive_emb is None)):
            raise ConfigError("GCBSBatchSampler needs either embed_fn or both query_emb and positive_emb")
        if quantile is not None and target_degree is not None:
            raise ConfigError("give either quantile or target_degree, not both")
        dim = 1  # d is unknown before embed_fn runs: a stand-in that finds budgets too small for any d
        if fixed:
            q = as_embeddings(query_emb, "query_emb", self.num_examples)  # type: ignore[arg-type]
            p = as_embeddings(positive_emb, "positive_emb", self.num_examples)  # type: ignore[arg-type]
            embed_fn = _fixed(q, p)
            dim = int(p.shape[1])
        self.embed_fn: EmbedFn = embed_fn  # type: ignore[assignment]
        self.quantile = quantile
        self.target_degree = target_degree
        self.shuffle_batches = bool(shuffle_batches)
        self.random_offset = bool(random_offset)
        self.sample_size = int(sample_size)
        self.chunk_size = int(chunk_size)
        self.device = device
        self.sync_ranks = bool(sync_ranks)
        self.collapse_fraction = float(collapse_fraction)
        if graph_method not in GRAPH_METHODS:
            raise ConfigError(f"graph_method must be one of {GRAPH_METHODS}, got {graph_method!r}")
        self.graph_method = graph_method
        if nprobe is not None and (isinstance(nprobe, bool) or int(nprobe) != nprobe or nprobe < 1):
            raise ConfigError(f"nprobe must be a positive integer, got {nprobe!r}")  # faiss asserts otherwise
        self.nprobe = None if nprobe is None else int(nprobe)
        check_layout_options(nlist, None, recall_target, None)
        self.nlist = None if nlist is None else int(nlist)
        self.recall_target = float(recall_target)
        resolve_precision(precision, resolve_device(device))  # a bad name is found now, not at epoch 0
        # Key-block options too (against the fixed positives' shape, else the stand-in d above).
        gcbs_key_block(key_block_size, memory_budget, (self.num_examples, dim), chunk_size=self.chunk_size,
                       precision=precision, device=device, graph_method=graph_method)  # fmt: skip
        self.precision = precision
        self.key_block_size = key_block_size
        self.memory_budget = memory_budget
        self.global_batches = bool(global_batches)
        if (
            self.global_batches
            and self.world_size > 1
            and self.batch_size * self.world_size > self.num_examples
        ):
            raise ConfigError(
                f"the global batch {self.batch_size} × {self.world_size} ranks is larger than the data "
                f"({self.num_examples} examples); use global_batches=False or a smaller batch size"
            )
        self._cache: tuple[int, list[list[int]]] | None = None
        #: Graph statistics and timings of every refresh, in order (``{"epoch", **stats, "seconds"}``).
        self.history: list[dict[str, Any]] = []

    @classmethod
    def input_kwargs(cls, inputs: SamplerInputs, options: Mapping[str, Any]) -> dict[str, Any]:
        """Re-embed with the live model before every epoch (the paper's setting) unless a teacher was chosen.

        An explicit teacher (or ``query_emb``/``positive_emb`` / ``embed_fn`` in ``options``) gives the fixed
        graph; a default teacher (the frozen starting model) is used only when no live model is offered.
        """
        if {"embed_fn", "query_emb", "positive_emb"} & set(options):
            return {}
        if inputs.model is not None and not (inputs.has_teacher and inputs.teacher_is_explicit):
            if inputs.dataset is None:
                raise ConfigError("GCBS refreshes with the model need the training dataset's texts")
            embed_fn = model_embed_fn(
                inputs.model, inputs.dataset, batch_size=inputs.embed_batch_size, device=inputs.device
            )
            return {"embed_fn": embed_fn}
        query_emb, positive_emb = inputs.teacher_embeddings()
        return {"query_emb": query_emb, "positive_emb": positive_emb}

    @property
    def last_stats(self) -> dict[str, Any]:
        """Statistics of the latest refresh (empty before the first)."""
        return self.history[-1] if self.history else {}

    # ----------------------------------------------------------------- batches
    def refresh(self, epoch: int, rng: np.random.Generator | None = None) -> GCBSResult:
        """Embed (``embed_fn(epoch)``) and run GCBS for ``epoch``; returns the raw result (unshuffled)."""
        rng = self.rng(epoch) if rng is None else rng
        query_emb, positive_emb = self.embed_fn(epoch)
        if len(query_emb) != self.num_examples or len(positive_emb) != self.num_examples:
            raise HardbatchError(
                f"embed_fn returned {len(query_emb)} query and {len(positive_emb)} positive rows for a dataset "
                f"of {self.num_examples} examples"
            )
        chunk = self._chunk_size
        offset = int(rng.integers(chunk)) if self.random_offset else 0
        offset = min(offset, self.num_examples - 1)
        result = mine_gcbs(
            query_emb,
            positive_emb,
            chunk,
            quantile=self.quantile,
            target_degree=self.target_degree,
            offset=offset,
            seed=int(rng.integers(2**31)),
            sample_size=self.sample_size,
            chunk_size=self.chunk_size,
            device=self.device,
            collapse_fraction=self.collapse_fraction,
            graph_method=self.graph_method,
            nlist=self.nlist,
            nprobe=self.nprobe,
            recall_target=self.recall_target,
            precision=self.precision,
            key_block_size=self.key_block_size,
            memory_budget=self.memory_budget,
            keep_graph=False,
            hash_inputs=False,
        )
        self.history.append({"epoch": int(epoch), **result.stats, "seconds": result.seconds})
        return result

    @property
    def _chunk_size(self) -> int:
        """Examples per contiguous chunk of the order: the global batch when split over the ranks."""
        return self.batch_size * self.world_size if self.global_batches else self.batch_size

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = self.rng(epoch)
        result = self.refresh(epoch, rng)
        batches = [b.tolist() for b in result.batches]
        chunk = self._chunk_size
        if self.shuffle_batches:
            full = [b for b in batches if len(b) == chunk]
            short = [b for b in batches if len(b) != chunk]
            batches = [full[i] for i in rng.permutation(len(full))] + short
        if chunk != self.batch_size:
            batches = split_global_batches(
                [b for b in batches if len(b) == chunk], self.batch_size, self.world_size
            )
        batches = self._broadcast(batches)
        self._cache = (epoch, batches)
        return batches

    def __len__(self) -> int:
        chunk = self._chunk_size
        if chunk == self.batch_size:
            return super().__len__()
        return self.world_size * (self.num_examples // chunk)  # the order wraps around: every chunk is full

    def _broadcast(self, batches: list[list[int]]) -> list[list[int]]:
        return broadcast_from_rank0(batches) if self.sync_ranks else batches

    # ----------------------------------------------------------------- resumption
    def state_dict(self) -> dict[str, Any]:
        """Base state plus the current epoch's batches, so a resume does not depend on a recomputed graph."""
        state = super().state_dict()
        if self._cache is not None and self._cache[0] == self.epoch and self._yielded > 0:
            state["epoch_batches"] = [list(b) for b in self._cache[1]]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "epoch_batches" in state:
            self._cache = (int(state["epoch"]), [list(map(int, b)) for b in state["epoch_batches"]])

    def get_config_dict(self) -> dict[str, Any]:
        """The options that decide the batches (device, precision and block sizes only change the cost)."""
        own = self._attributes(
            "quantile", "target_degree", "sample_size", "graph_method", "shuffle_batches",
            "random_offset", "global_batches",
        )  # fmt: skip
        if self.graph_method != "exact":  # an approximate graph depends on its lists and how many it probes
            own.update(nlist=self.nlist, nprobe=self.nprobe)
        if self.graph_method == "ivf_torch":
            own["recall_target"] = self.recall_target
        return {**super().get_config_dict(), **own}


def _fixed(query_emb: np.ndarray, positive_emb: np.ndarray) -> EmbedFn:
    def embed(epoch: int) -> tuple[np.ndarray, np.ndarray]:
        return query_emb, positive_emb

    return embed
