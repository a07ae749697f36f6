"""GCBS — Global Contrastive Batch Sampling (Sachidananda, Yang & Zhu, ICML 2023).

One refresh (the paper runs it before every epoch with the model being trained):

1. L2-normalise query embeddings X and positive embeddings Y (cosine geometry).
2. Find the threshold t: the global quantile q (default 0.999, the paper's) of all N² entries of X·Yᵀ,
   estimated on a sampled sub-matrix for large N (:func:`~hardbatch.graph.threshold.estimate_similarity_quantile`);
   or, alternatively, the quantile that keeps ``target_degree`` entries per row on average.
3. Build the binary sparse graph of entries above t, block by block (never N × N)
   (:func:`~hardbatch.graph.threshold.threshold_graph`), without the self-loops (i, i).
4. Order the examples by reverse Cuthill–McKee on the symmetrised graph (bandwidth minimisation), so
   strongly similar pairs sit next to each other (:func:`~hardbatch.graph.ordering.rcm_order`).
5. Cut the order into consecutive batches of ``batch_size`` (from a per-epoch offset, see below).

Decisions the paper leaves open, made explicit here:

* the batch boundaries start at ``offset`` (the sampler draws it per epoch), and the ``offset`` examples
  before the first boundary wrap around to the end. Pairs split by a boundary in one epoch then meet in
  another, and with ``drop_last`` a different tail is left out every epoch;
* RCM ties (component start nodes, isolated nodes) are broken by a seeded relabelling, so the dataset's
  own order does not leak into the batches;
* a health check: when the graph collapses into one giant component (q too low for this N), RCM cannot
  reduce the bandwidth and batches become near random. :class:`GraphCollapseWarning` is raised then.
  As a rule of thumb the average degree (1 - q) · N should stay below the batch size (hub-heavy real
  data collapses sooner than clustered synthetic data).

Cost per refresh: O(N² · d) for the similarity pass (it dominates), O(N·d + N + nnz) memory beyond one
``chunk_size × N`` block, plus O(nnz log Δ) for RCM. With ``key_block_size`` (or ``memory_budget``) the
positives are read block by block and nothing is copied whole: O(B·d + chunk_size·B + N + nnz) (the
bounds of every stage are in :func:`mine_gcbs`). The embedding pass is the caller's. For large N,
``graph_method="ivf_torch"`` replaces the exact pass by a grouped IVF search at about ``nprobe / nlist`` of its
products, at matmul speed, with ``nprobe`` calibrated to an edge recall (default 0.95)
(:func:`~hardbatch.graph.ivf_threshold.ivf_torch_threshold_graph`); ``graph_method="ivf"`` by a faiss IVF
range search (:func:`~hardbatch.graph.threshold.ivf_threshold_graph`, one query at a time). Both miss a few
edges and never add one.

References:
    Vin Sachidananda, Ziyi Yang, Chenguang Zhu. Global Selection of Contrastive Batches via Optimization
    on Sample Permutations. ICML 2023 (arXiv 2210.12874).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from hardbatch.device import resolve_device
from hardbatch.errors import ConfigError
from hardbatch.graph.ivf import check_layout_options
from hardbatch.graph.ivf_threshold import ivf_torch_threshold_graph
from hardbatch.graph.ordering import bandwidth, degree_stats, rcm_order, same_batch_fraction, symmetrize
from hardbatch.graph.precision import resolve_precision
from hardbatch.graph.threshold import (
    DEFAULT_QUANTILE_SAMPLE,
    degree_for_quantile,
    estimate_similarity_quantile,
    ivf_threshold_graph,
    normalize_rows,
    quantile_for_degree,
    threshold_graph,
    threshold_key_block,
)
from hardbatch.mining.plan import input_hashes
from hardbatch.progress import StageTimer
from hardbatch.validation import check_batch_size, check_embeddings

__all__ = [
    "GRAPH_METHODS",
    "GCBSResult",
    "GraphCollapseWarning",
    "cut_batches",
    "gcbs_key_block",
    "mine_gcbs",
]

logger = logging.getLogger(__name__)

#: How step 3 is computed: the exact chunked pass, or an IVF search (approximate, large N): ``"ivf_torch"``
#: (grouped, at matmul speed, ``nprobe`` calibrated to an edge recall) or ``"ivf"`` (faiss range search).
GRAPH_METHODS = ("exact", "ivf", "ivf_torch")

#: faiss IVF lists searched per example when ``nprobe`` is not given (``graph_method="ivf"``).
_FAISS_NPROBE = 32


class GraphCollapseWarning(UserWarning):
    """The thresholded graph is one giant component: GCBS batches will be close to random."""


@dataclass
class GCBSResult:
    """The outcome of one GCBS refresh.

    Attributes:
        order: (N,) int64 RCM order of the examples.
        batches: consecutive chunks of the (offset) order, each an int64 array; only the last may be short.
        threshold: similarity threshold used.
        quantile: the quantile that threshold corresponds to.
        stats: graph and batching statistics (nnz, degree stats, components, bandwidth before/after,
            fraction of graph edges inside a batch, and the same fraction expected for random batches).
        seconds: per-stage wall-clock seconds and peak RSS (``StageTimer.as_dict()``).
        graph: the symmetrised binary graph (N, N), kept for inspection.
        hashes: the input hashes (:func:`~hardbatch.mining.plan.input_hashes`) carried into
            :meth:`to_plan`, so a plan of other data is detected on load.
        params: the mining parameters, recorded in the plan.
    """

    order: np.ndarray
    batches: list[np.ndarray]
    threshold: float
    quantile: float
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    graph: sp.csr_array | None = None
    hashes: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    def to_plan(self, params: dict[str, Any] | None = None):
        """A :class:`~hardbatch.mining.plan.BatchPlan` whose clusters are the full GCBS batches.

        ``plan.batches(epoch)`` then shuffles the order of the GCBS batches (not their content) every epoch
        — GCBS with a fixed teacher. The short last batch becomes the plan's remainder. The plan carries
        the result's input hashes and parameters; ``params`` adds to them (e.g. the teacher's name).
        """
        from hardbatch.mining.plan import BatchPlan

        size = len(self.batches[0])
        full = [b for b in self.batches if len(b) == size]
        short = [b for b in self.batches if len(b) != size]
        clusters = np.stack(full) if full else np.empty((0, size), dtype=np.int64)
        remainder = np.concatenate(short) if short else np.empty(0, dtype=np.int64)
        merged = {"method": "gcbs", "cluster_size": size, "batch_size": size, **self.params, **(params or {})}
        merged.update(threshold=self.threshold, quantile=self.quantile)
        return BatchPlan(
            clusters=clusters,
            remainder=remainder,
            num_examples=len(self.order),
            params=merged,
            hashes=dict(self.hashes),
            stats={"gcbs": self.stats, "seconds": self.seconds},
        )


def cut_batches(order: np.ndarray, batch_size: int, offset: int = 0) -> list[np.ndarray]:
    """Cut ``order`` into consecutive chunks of ``batch_size`` whose boundaries start at ``offset``.

    The first ``offset`` elements wrap around to the end, so only the last chunk can be short.

    Example:
        >>> [b.tolist() for b in cut_batches(np.arange(7), 3, offset=1)]
        [[1, 2, 3], [4, 5, 6], [0]]
    """
    order = np.asarray(order, dtype=np.int64)
    if order.size and not 0 <= offset < max(1, order.size):
        raise ConfigError(f"offset must lie in [0, {order.size}), got {offset}")
    rolled = np.concatenate([order[offset:], order[:offset]])
    return [rolled[start : start + batch_size] for start in range(0, rolled.size, batch_size)]


def _resolve_quantile(quantile: float | None, target_degree: float | None, num_keys: int) -> float:
    if target_degree is not None:
        if quantile is not None:
            raise ConfigError("give either quantile or target_degree, not both")
        return quantile_for_degree(target_degree, num_keys)
    return 0.999 if quantile is None else float(quantile)


def gcbs_key_block(
    key_block_size: int | str | None,
    memory_budget: int | str | None,
    keys: np.ndarray | torch.Tensor | tuple[int, int],
    *,
    chunk_size: int = 2048,
    precision: str = "auto",
    device: str | torch.device | None = "auto",
    graph_method: str = "exact",
) -> int | None:
    """The key block of :func:`mine_gcbs`'s exact graph pass (None: all positives resident), checked.

    ``keys`` are the (N, d) positives or just their shape; a caller that does not know d yet (a sampler
    before its first refresh) gives ``(N, 1)``, which finds the budgets too small for any d. O(log N).

    Raises:
        ConfigError: malformed or contradictory options (:func:`~hardbatch.graph.budget.check_key_block_options`),
            key blocks with ``graph_method="ivf"`` (it holds every key), an unknown precision or device, or a
            budget too small for the smallest key block (:func:`~hardbatch.graph.threshold.threshold_key_block`).

    Example:
        >>> gcbs_key_block(None, "64MiB", (300, 24), chunk_size=64, precision="fp32", device="cpu")
        300
        >>> gcbs_key_block(37, None, (300, 24), device="cpu"), gcbs_key_block(None, None, (300, 24))
        (37, None)
    """
    if key_block_size is None and memory_budget is None:
        return None
    if graph_method != "exact":
        raise ConfigError("key_block_size and memory_budget apply to graph_method='exact' only")
    mode = resolve_precision(precision, resolve_device(device))
    return threshold_key_block(key_block_size, memory_budget, keys, chunk_size, mode)


def mine_gcbs(
    query_emb: np.ndarray | torch.Tensor,
    positive_emb: np.ndarray | torch.Tensor,
    batch_size: int,
    *,
    quantile: float | None = None,
    target_degree: float | None = None,
    offset: int = 0,
    seed: int | None = 0,
    sample_size: int = DEFAULT_QUANTILE_SAMPLE,
    chunk_size: int = 2048,
    device: str | torch.device | None = "auto",
    collapse_fraction: float = 0.9,
    max_avg_degree: float = 1024.0,
    keep_graph: bool = True,
    graph_method: str = "exact",
    nlist: int | None = None,
    nprobe: int | None = None,
    recall_target: float = 0.95,
    precision: str = "auto",
    key_block_size: int | str | None = None,
    memory_budget: int | str | None = None,
    dataset_hash: str | None = None,
    hash_inputs: bool = True,
    show_progress: bool | None = None,
    graph_search: Callable[..., tuple[sp.csr_array, dict[str, Any]]] | None = None,
) -> GCBSResult:
    """One GCBS refresh: thresholded query × positive similarity graph → RCM order → consecutive batches.

    Args:
        query_emb: (N, d) float query embeddings (any scale; normalised here).
        positive_emb: (N, d) float positive embeddings, row i the positive of query i.
        batch_size: examples per batch.
        quantile: global quantile q of the similarities used as threshold (default 0.999 as in the paper).
        target_degree: alternative to ``quantile``: keep about this many edges per example
            (q = 1 - target_degree / N). Around ``batch_size`` is a good value for any N.
        offset: position of the first batch boundary in the order (see :func:`cut_batches`).
        seed: seed of the quantile sample and of the RCM tie-breaking relabelling (None: no relabelling).
        sample_size: similarity entries used to estimate the quantile (exact below this size).
        chunk_size: rows per similarity block (memory ``chunk_size · N · 4`` bytes).
        device: torch device for the similarity pass ("auto": CUDA when available).
        collapse_fraction: warn when the largest connected component holds more than this fraction of the
            examples.
        max_avg_degree: refuse graphs denser than this (a threshold far too low).
        keep_graph: keep the symmetrised graph in the result.
        graph_method: ``"exact"`` (chunked full similarity pass, O(N²·d)), ``"ivf_torch"`` (grouped IVF
            search over ``nprobe`` of about sqrt(N) lists at matmul speed, bf16 where fast, ``nprobe``
            calibrated to ``recall_target``: roughly ``nprobe / nlist`` of the products, some edges missed,
            no faiss needed) or ``"ivf"`` (faiss IVF range search over ``nprobe`` of about 4·sqrt(N) lists,
            one query at a time; needs the ``faiss`` extra). The quantile is estimated exactly on a sample
            in every case.
        nlist: IVF lists (None: about sqrt(N) for ``"ivf_torch"``, 4·sqrt(N) for ``"ivf"``).
        nprobe: IVF lists searched per example (None: calibrated for ``"ivf_torch"``, 32 for ``"ivf"``).
        recall_target: the edge recall (edges found / exact edges, measured on 500 sampled rows) the
            ``"ivf_torch"`` calibration reaches; the trace is in ``stats["graph_search"]``.
        precision: matmul precision of the exact graph pass: "auto" (bf16 where fast), "fp32" or "bf16";
            the graph is the fp32 one either way (:func:`~hardbatch.graph.threshold.threshold_graph`).
        key_block_size: positives resident at a time in the exact graph pass (None: all of them; "auto":
            chosen from ``memory_budget``). The embeddings are then never normalised up front: the quantile
            sample and the graph pass read (and normalise) the rows they need from the given arrays, e.g.
            memory-mapped ``.npy`` files, so no stage holds all positives; the graph, the order and the
            batches are the unblocked ones.
        memory_budget: bytes (or "4GiB") for the graph pass's key block, row block and score block
            (:func:`~hardbatch.graph.threshold.threshold_working_set`); alone it means
            ``key_block_size="auto"``.
        dataset_hash: fingerprint of the dataset the embeddings came from (recorded in the plan).
        hash_inputs: hash the embeddings for :meth:`GCBSResult.to_plan` (O(N·d); the per-epoch sampler
            refresh turns it off).
        show_progress: progress bar for the similarity pass.
        graph_search: replaces the threshold-graph pass of step 3 (``graph_method`` "exact" or
            "ivf_torch"): called once as ``fn(x, y, threshold, **options)`` with the (N, d) query and
            positive arrays as given (not normalised: it reads and normalises the rows it needs, row-wise)
            and, for "ivf_torch", the search options this call resolved (``nlist``, ``nprobe``,
            ``recall_target``, ``seed``: the keywords of
            :func:`~hardbatch.graph.ivf_threshold.threshold_layout`; none for "exact"), it returns
            ``(graph, info)``: the directed (N, N) graph that ``graph_method`` gives (diagonal left out, at
            most ``max_avg_degree`` edges per row) and what the search reports (``stats["graph_search"]``
            when not empty). :func:`hardbatch.mining.distributed.mine_gcbs_distributed` uses it to split
            the pass over ranks.

    Returns:
        :class:`GCBSResult`.

    Raises:
        DataError: embeddings are not finite 2-D float arrays of matching shape.
        ConfigError: bad batch size, quantile, key-block options (``graph_method="ivf"`` holds every key),
            a budget too small for the smallest key block, or a graph that would be too dense.

    Memory per stage (N examples, d dimensions, c = ``chunk_size``, B = key block, S = ``sample_size``,
    m = (1 - q)·S sampled values kept): normalisation O(N·d) for the fp32 copies of both sides (none with
    key blocks); quantile O(sqrt(S)·d) sampled rows and keys + O(c·sqrt(S)) scores + O(m); graph
    O(N·d + c·N) without key blocks, :func:`~hardbatch.graph.threshold.threshold_working_set` (B·d + c·B)
    with them, + O(nnz) edges either way; symmetrise and RCM O(N + nnz); input hashes and validation stream
    the inputs in chunks.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> centers = rng.normal(size=(10, 16))
        >>> q = np.repeat(centers, 20, axis=0) + 0.1 * rng.normal(size=(200, 16))
        >>> result = mine_gcbs(q, q + 0.05 * rng.normal(size=q.shape), 20, target_degree=19, device="cpu")
        >>> len(result.batches), result.stats["same_batch_edge_fraction"] > 0.5
        (10, True)
    """
    n = len(query_emb)
    check_embeddings(query_emb, "query embeddings")
    check_embeddings(positive_emb, "positive embeddings", rows=n, dim=query_emb.shape[1])
    check_batch_size(batch_size, n)
    q = _resolve_quantile(quantile, target_degree, n)
    if graph_method not in GRAPH_METHODS:
        raise ConfigError(f"graph_method must be one of {GRAPH_METHODS}, got {graph_method!r}")
    if nprobe is not None and (isinstance(nprobe, bool) or not isinstance(nprobe, int) or nprobe < 1):
        raise ConfigError(f"nprobe must be a positive integer, got {nprobe!r}")  # faiss asserts otherwise
    check_layout_options(nlist, None, recall_target, None)
    search_options = _search_options(graph_method, nlist, nprobe, recall_target, seed)
    timer = StageTimer()
    dev = resolve_device(device)
    blocked = key_block_size is not None or memory_budget is not None
    # With key blocks, or a replaced graph pass that reads only the rows it needs, nothing is normalised whole.
    lazy = blocked or graph_search is not None
    block = gcbs_key_block(key_block_size, memory_budget, positive_emb, chunk_size=chunk_size,
                           precision=precision, device=dev, graph_method=graph_method)  # fmt: skip
    with timer.stage("normalize"):
        # Row-wise normalisation gives every row the same bits up front or block by block, so with key blocks
        # the inputs are read (and normalised) where needed instead of copied whole.
        x = query_emb if lazy else normalize_rows(query_emb, dev)
        y = positive_emb if lazy else normalize_rows(positive_emb, dev)
    with timer.stage("quantile"):
        threshold = estimate_similarity_quantile(
            x, y, q, sample_size=sample_size, seed=0 if seed is None else seed, chunk_size=chunk_size,
            device=dev, normalize=lazy,
        )  # fmt: skip
    search_info: dict[str, Any] = {}
    with timer.stage("threshold_graph"):
        if graph_method == "ivf":
            directed = ivf_threshold_graph(
                x.cpu(), y.cpu(), threshold, normalize=False, drop_diagonal=True, max_avg_degree=max_avg_degree,
                show_progress=show_progress, **search_options,
            )  # fmt: skip
        elif graph_method == "ivf_torch" and graph_search is None:
            directed, search_info = ivf_torch_threshold_graph(
                x, y, threshold, drop_diagonal=True, normalize=False, max_avg_degree=max_avg_degree,
                precision=precision, device=dev, show_progress=show_progress, **search_options,
            )  # fmt: skip
        elif graph_search is not None:
            directed, search_info = graph_search(x, y, threshold, **search_options)
        else:
            directed = threshold_graph(
                x, y, threshold, chunk_size=chunk_size, device=dev, normalize=blocked, drop_diagonal=True,
                max_avg_degree=max_avg_degree, precision=precision, key_block_size=block,
                show_progress=show_progress,
            )  # fmt: skip
        del x, y
        graph = symmetrize(directed)
    with timer.stage("rcm"):
        order = rcm_order(graph, seed=seed)
    with timer.stage("batching"):
        batches = cut_batches(order, batch_size, offset)
        batch_of = np.empty(n, dtype=np.int64)
        for index, batch in enumerate(batches):
            batch_of[batch] = index
    stats = _graph_report(graph, directed, order, batch_of, batch_size, q, threshold)
    if search_info:
        stats["graph_search"] = search_info
    if blocked:
        stats.update(key_block_size=int(min(block or n, n)), key_blocks=-(-n // min(block or n, n)))
    params: dict[str, Any] = {"seed": seed, "target_degree": target_degree, "offset": offset}
    if graph_method != "exact":  # with ivf_torch, the lists searched are in stats["graph_search"]
        params.update(graph_method=graph_method, **{k: v for k, v in search_options.items() if k != "seed"})
    result = GCBSResult(
        order=order,
        batches=batches,
        threshold=threshold,
        quantile=q,
        stats=stats,
        seconds=timer.as_dict(),
        graph=graph if keep_graph else None,
        hashes=input_hashes(query_emb, positive_emb, dataset_hash) if hash_inputs else {},
        params=params,
    )
    _log_and_check(result, collapse_fraction)
    return result


def _search_options(
    graph_method: str, nlist: int | None, nprobe: int | None, recall_target: float, seed: int | None
) -> dict[str, Any]:
    """The keywords of the approximate graph search (none for ``"exact"``): faiss's ``ivf`` probes
    ``_FAISS_NPROBE`` lists when ``nprobe`` is None, ``ivf_torch`` calibrates it to ``recall_target``."""
    seed = 0 if seed is None else int(seed)
    if graph_method == "ivf":
        return {"nlist": nlist, "nprobe": _FAISS_NPROBE if nprobe is None else nprobe, "seed": seed}
    if graph_method == "ivf_torch":
        return {"nlist": nlist, "nprobe": nprobe, "recall_target": float(recall_target), "seed": seed}
    return {}


def _graph_report(
    graph: sp.csr_array,
    directed: sp.csr_array,
    order: np.ndarray,
    batch_of: np.ndarray,
    batch_size: int,
    quantile: float,
    threshold: float,
) -> dict[str, Any]:
    n = graph.shape[0]
    stats: dict[str, Any] = {
        "num_examples": int(n),
        "batch_size": int(batch_size),
        "quantile": float(quantile),
        "threshold": float(threshold),
        "expected_degree": degree_for_quantile(quantile, n),
        "nnz_directed": int(directed.nnz),
    }
    stats.update(degree_stats(graph))
    stats["bandwidth_before"] = bandwidth(graph)
    stats["bandwidth_after"] = bandwidth(graph, order)
    stats["same_batch_edge_fraction"] = same_batch_fraction(graph, batch_of)
    # A random assignment puts an edge's endpoints together with probability (b - 1) / (N - 1).
    stats["same_batch_edge_fraction_random"] = (batch_size - 1) / max(1, n - 1)
    return stats


def _log_and_check(result: GCBSResult, collapse_fraction: float) -> None:
    s = result.stats
    logger.info(
        "GCBS: q=%.6f threshold=%.4f edges=%d degree mean=%.1f median=%.0f max=%d isolated=%.1f%% "
        "components=%d giant=%.1f%% bandwidth %d -> %d, %.1f%% of edges inside a batch (random: %.2f%%)",
        s["quantile"], s["threshold"], s["edges"], s["degree_mean"], s["degree_median"], s["degree_max"],
        100 * s["isolated_fraction"], s["components"], 100 * s["giant_component_fraction"],
        s["bandwidth_before"], s["bandwidth_after"], 100 * np.nan_to_num(s["same_batch_edge_fraction"]),
        100 * s["same_batch_edge_fraction_random"],
    )  # fmt: skip
    if s["edges"] and s["giant_component_fraction"] > collapse_fraction:
        warnings.warn(
            f"GCBS graph collapsed into one giant component ({100 * s['giant_component_fraction']:.0f}% of "
            f"{s['num_examples']} examples, average degree {s['degree_mean']:.0f}); RCM bandwidth "
            f"{s['bandwidth_before']} -> {s['bandwidth_after']}, only "
            f"{100 * np.nan_to_num(s['same_batch_edge_fraction']):.1f}% of edges inside a batch, so batches are "
            f"close to random. Raise the quantile (now {s['quantile']:.6f}) or use a target_degree below the "
            f"batch size ({s['batch_size']}), e.g. {max(1, s['batch_size'] // 2)}.",
            GraphCollapseWarning,
            stacklevel=3,
        )
