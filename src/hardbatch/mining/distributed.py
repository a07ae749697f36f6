"""B3 and GCBS mining over many processes with torch.distributed: each rank handles its shard of the queries.

The teacher ranking is the only stage that grows as N² (see :mod:`hardbatch.mining.b3`); here it is split by
query rows over the ``W`` ranks of the default process group (gloo on CPU, NCCL on GPU, e.g. under
``torchrun --nproc-per-node W -m hardbatch mine b3 ...``). Rank 0 runs :func:`~hardbatch.mining.b3.mine_b3`
with a ``neighbor_search`` that, for every source group it ranks:

1. broadcasts the request (k and the group's example ids) to the other ranks, which wait in
   :func:`_serve`;
2. every rank (rank 0 too) searches rows ``[r·n/W, (r+1)·n/W)`` of the group against all its positives with
   :func:`hardbatch.graph.knn.knn_exact` (``row_offset`` keeps the self-exclusion aligned);
3. the (rows, k) index and score shards are gathered to rank 0 (``dist.gather`` of padded tensors) and
   concatenated in rank order.

The graph, the partition and the plan are then built once, on rank 0; only rank 0 returns (and writes) the
plan, with ``world_size`` recorded in its parameters. Every row's neighbours are computed by the same
deterministic code whichever rank holds it, so the plan equals the single-process plan for the same inputs
(tested with 2 and 4 gloo ranks in ``tests/mining/test_distributed_mining.py``).

Cost per rank: time O(N²·d / W) for the ranking; memory O(N·d) for the positives (each rank reads them,
typically from a memory-mapped ``.npy``), O(chunk·N) for one score block and O(N·k / W) for its results;
rank 0 also holds the gathered O(N·k) window and runs the O(N·m) graph and partition stages.
With ``key_block_size=B`` a rank holds one block of B positives at a time instead (O(B·d) + O(chunk·B)):
every rank reads the blocks itself, once, from the same memory-mapped file, which needs a filesystem the
ranks share (or a copy per node). Its row shard (N/W query rows) is re-read once per block.

With ``exchange="ring"`` (:func:`_ring_search`) rank r reads only rows [r·n/W, (r+1)·n/W) of the group's
queries *and positives*; the positive shards travel rank → rank + 1 with P2P sends
(:func:`hardbatch.distributed.circulate`, overlapped with the search), every rank searches its queries
against each shard as it arrives (its own first, where the diagonal is dropped) and merges the shard's top k
into its running top k under the global tie rule. Memory per rank O(2·(n/W)·d) for two shards (key blocks
still apply inside a shard); every positive is read from storage once in all instead of once per rank; each
rank receives W − 1 shards. Same plan (tested as for "read", with a source group of 5 examples, so shards
of one or two rows, and key blocks inside the shards). A rank that fails mid-ring keeps passing its shards
until the ring is done, then every rank raises together; shards of another width never travel (the shapes
are agreed first).
With ``knn="ivf_torch"`` (:func:`_ivf_search`, ``exchange="read"`` only: an IVF group probes lists across
all positives) the ranks build the group's IVF layout together (:func:`hardbatch.graph.ivf.ivf_layout`
with a :class:`hardbatch.distributed.WorkSplit`): the k-means iterations
(:func:`hardbatch.graph.kmeans.spherical_kmeans`), the list of every key, the group of every row, the group
means and the calibration's sampled rows are computed in fixed blocks dealt to the ranks and gathered (the
sums are numpy sums per cluster or group, the same bits on any rank), so every rank holds the single-process layout, O(n + L²) for L lists. The IVF groups
are dealt to the ranks by the products their search computes (:func:`deal_by_cost`), every rank searches its
groups against all the positives (:func:`hardbatch.graph.ivf.search_groups`; a group's answer depends on
the layout only), and rank 0 places the gathered rows by id; the recall against exact is then measured on
rank 0 as in one process. Where the layout says the exact search is cheaper, the exact "read" search runs
instead. Cost per rank: memory O(n·d) for the resident positives (as "read"), time about 1/W of the
set-up (k-means, assignment, calibration) and of the IVF products.
The faiss backends ("ivf", "hnsw") are not distributed: their index would be built on every rank.

GCBS (:func:`mine_gcbs_distributed`) splits its threshold graph the same way: rank 0 runs
:func:`~hardbatch.mining.gcbs.mine_gcbs` up to the threshold (the sampled global quantile, computed on rank 0
only, so it is the single-process threshold), broadcasts it (float64, exact), every rank builds rows
``[r·N/W, (r+1)·N/W)`` of the graph against all positives, and the slices are gathered to rank 0 (edge counts
by ``all_gather``, then padded (row, column) pairs by ``dist.gather``), which orders and batches as one
process. Cost per rank: time O(N²·d / W); memory O(N·d) for the positives, O(chunk·N) for one block and
O(nnz / W) for its slice; rank 0 also O(sample·d) time for the threshold, W × the largest slice while
gathering, the O(N + nnz) graph and RCM. With ``key_block_size=B`` (or ``memory_budget``) no rank normalises
or holds the inputs whole: each reads its row shard and the positives B at a time from the given arrays
(the same memory-mapped file), O(B·d + chunk·B) (:func:`hardbatch.graph.threshold.threshold_working_set`),
and rank 0's quantile sample O(sqrt(sample)·d); the slices and the graph are unchanged. With
``exchange="ring"`` (:func:`_ring_graph`) each rank normalises only its rows and its positive shard, and the
normalised shards circulate as in B3: the slice is thresholded shard by shard (columns placed by global
index, the density cap counted over all shards) and is the same slice; O(2·N/W·d) per rank.

Hierarchical B3 (:func:`mine_b3_hierarchical_distributed`, ``torchrun ... mine b3 --shard-size S``) spreads
whole shards instead of query rows: rank 0 cuts the coarse shards once (k-means, whose float sums may depend
on the thread count, so the ranks never recompute them) and broadcasts them with the input shape; every rank
mines the shards :func:`assign_shards` gives it (largest first, to the least loaded rank by Σ s², the same
on every rank) with the one-process :meth:`~hardbatch.mining.hierarchical.HierarchicalRun.mine`, alone
(any ``knn`` backend, key blocks: nothing is exchanged while a shard is mined); the results (int32 positions
in their shards) are gathered to rank 0 (``gather_object``), which merges them in shard order with the
one-process :meth:`~hardbatch.mining.hierarchical.HierarchicalRun.merge`. Cost per rank: time
Σ_own O(s²·d) ≈ O(N·s·d / W); memory O(s·(d + m)) for one shard (a memory-mapped input is read at its rows
only) + O(N) for the shard ids; rank 0 also O(N·C·d) for the cut (streamed) and O(N·d) streamed for the
merge's hashes and hardness. No serve loop here: each of the three steps (options and cut, mining, merge)
ends in a :func:`~hardbatch.distributed.raise_together` report, so a failure on any rank raises on every
rank (same plan as one process with 2 and 3 gloo ranks, failures with 2:
``tests/mining/test_distributed_hierarchical.py``).

**Failures.** The ranks > 0 wait in a serve loop for rank 0's next request. Within a request every rank
reports its outcome before the results travel (:func:`hardbatch.distributed.raise_together`, one
``all_gather_object`` of an error name and message or None), so a rank that fails (bad input, a shape that
differs from rank 0's, out of memory) makes every rank raise at once instead of leaving the others in the
gather until the process group's timeout; a failure of rank 0 outside a request (its own input checks, a
graph too dense, RCM, METIS) is sent as a ``_FAIL`` header and the same report. Every rank then raises: a
:class:`~hardbatch.errors.HardbatchError` with its class and message, anything else as a RuntimeError naming
the failed rank (the failing rank raises its own exception). Tested in ``tests/mining/test_distributed_gcbs.py``.

Embeddings computed by the ranks themselves (``torchrun ... mine b3 DATA`` without embedding files) come from
:mod:`hardbatch.embed.sharded`, which gives every rank the full single-process query and positive matrices.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist

from hardbatch.device import resolve_device
from hardbatch.distributed import (
    Ring,
    WorkSplit,
    broadcast_from_rank0,
    circulate,
    comm_device,
    is_distributed,
    raise_together,
)
from hardbatch.errors import ConfigError, DataError
from hardbatch.graph.ivf import IvfLayout, finish_info, ivf_layout, search_groups
from hardbatch.graph.knn import KnnResult, check_k, knn_exact
from hardbatch.graph.precision import resolve_precision
from hardbatch.graph.similarity import RowSubset, as_tensor, take_rows
from hardbatch.graph.topk import merge_topk
from hardbatch.mining.plan import BatchPlan

if TYPE_CHECKING:
    from hardbatch.mining.gcbs import GCBSResult
    from hardbatch.mining.hierarchical import HierarchicalRun, Shard, ShardResult

__all__ = [
    "DISTRIBUTED_GRAPH_METHODS",
    "DISTRIBUTED_KNN",
    "EXCHANGES",
    "assign_shards",
    "check_exchange",
    "deal_by_cost",
    "mine_b3_distributed",
    "mine_b3_hierarchical_distributed",
    "mine_gcbs_distributed",
]

_STOP, _SEARCH, _GRAPH, _FAIL = 0, 1, 2, 3
_B3_WHAT = "ranking its shard of B3 queries"
_GCBS_WHAT = "building its slice of the GCBS graph"

T = TypeVar("T")

#: B3 options of the whole run that are not :func:`~hardbatch.graph.knn.knn_exact` arguments.
_NOT_SEARCH = ("exchange", "knn", "seed")


#: kNN backends whose search is spread over the ranks (the faiss indexes would be built on every rank).
DISTRIBUTED_KNN = ("exact", "ivf_torch")

#: The GCBS graph methods whose threshold graph the ranks build together.
DISTRIBUTED_GRAPH_METHODS = ("exact", "ivf_torch")

#: How the positives reach the ranks: every rank reads them all, or each reads its shard and they circulate.
EXCHANGES = ("read", "ring")


def check_exchange(exchange: str) -> None:
    """ConfigError unless ``exchange`` is one of :data:`EXCHANGES`."""
    if exchange not in EXCHANGES:
        raise ConfigError(f"exchange must be one of {EXCHANGES}, got {exchange!r}")


def _shard(num_rows: int, rank: int, world: int) -> tuple[int, int]:
    return rank * num_rows // world, (rank + 1) * num_rows // world


def _shard_sizes(num_rows: int, world: int) -> list[int]:
    """Rows of every rank's shard, by rank."""
    return [hi - lo for lo, hi in (_shard(num_rows, r, world) for r in range(world))]


def _group_parts(
    query: Any, positive: Any, ids: np.ndarray | None, options: dict[str, Any]
) -> tuple[Any, Any]:
    """The group's queries and positives: the inputs themselves, or the rows ``ids`` (read block by block
    with key blocks)."""
    if ids is None:
        return query, positive
    if options["key_block_size"] is not None or options["memory_budget"] is not None:
        return RowSubset(np.asarray(query), ids), RowSubset(np.asarray(positive), ids)
    return np.asarray(query)[ids], np.asarray(positive)[ids]


def _local_search(
    query: Any, positive: Any, ids: np.ndarray | None, k: int, rank: int, world: int, options: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    q_part, p_part = _group_parts(query, positive, ids, options)
    lo, hi = _shard(len(q_part), rank, world)
    if hi == lo:
        return np.empty((0, k), np.int32), np.empty((0, k), np.float32), {}
    result = knn_exact(q_part[lo:hi], p_part, k, exclude_self=True, row_offset=lo, **options)
    return result.indices, result.scores, result.info


def _search_shard(
    query: Any, positive: Any, ids: np.ndarray | None, k: int, rank: int, world: int, options: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """This rank's rows of the group's ranking, by the exchange ``options["exchange"]`` names."""
    search_options = {key: value for key, value in options.items() if key not in _NOT_SEARCH}
    if options.get("exchange", "read") == "ring":
        return _ring_search(query, positive, ids, k, rank, world, search_options)
    found, failure = _attempt(_local_search, query, positive, ids, k, rank, world, search_options)
    raise_together(failure, _B3_WHAT)
    assert found is not None
    return found


def _ring_rows(
    query: Any, positive: Any, ids: np.ndarray | None, lo: int, hi: int
) -> tuple[Any, torch.Tensor]:
    """Rows [lo, hi) of the group: the queries as given (read when searched), the positives as a tensor."""
    if ids is None:
        rows, keys = query[lo:hi], positive[lo:hi]
    else:
        rows, keys = take_rows(query, ids[lo:hi]), take_rows(positive, ids[lo:hi])
    return rows, as_tensor(keys, comm_device())


def _ring_search(
    query: Any, positive: Any, ids: np.ndarray | None, k: int, rank: int, world: int, options: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """This rank's query shard against every rank's shard of the positives, the shards passed around the ring.

    Rank r reads rows [r·n/W, (r+1)·n/W) of the group's queries and positives only. Its positive shard
    travels rank → rank + 1 (:func:`hardbatch.distributed.circulate`), so at every step a rank searches its
    queries against one shard (its own first, where ``exclude_self`` drops the diagonal) with
    :func:`~hardbatch.graph.knn.knn_exact` and merges the shard's top k into its running top k by the
    global tie rule (:func:`~hardbatch.graph.topk.merge_topk` with global key indices), so the answer is
    the one of a search over all positives. A rank that fails (bad input, out of memory) keeps passing
    shards until the ring is done, then every rank raises together: no rank is left waiting in a receive.

    Memory per rank: O(2·(n/W)·d) for its shard and the arriving one, plus :func:`knn_exact`'s blocks.
    Time: the same O(n²·d / W) as reading every positive; W − 1 shards received per rank.
    """
    num = len(query) if ids is None else len(ids)
    lo, hi = _shard(num, rank, world)
    sizes = _shard_sizes(num, world)
    prepared, failure = _attempt(_ring_rows, query, positive, ids, lo, hi)
    if failure is None:
        failure = _attempt(check_k, k, num, True)[1]
    shapes: list[Any] = [None] * world
    dim = None if prepared is None else int(prepared[1].shape[1])
    dist.all_gather_object(shapes, (num, dim))  # every shard must fit the others' receive buffers
    if failure is None and len({shape for shape in shapes if shape[1] is not None}) > 1:
        failure = DataError(
            f"the ranks' positive shards disagree in shape (rows of the group, dim) = {shapes}; every rank must "
            "read the same embeddings"
        )
    raise_together(failure, _B3_WHAT)
    assert prepared is not None
    rows, own = prepared
    ring = Ring()
    held: list[tuple[np.ndarray, np.ndarray]] = []  # the running top of the shards seen: (scores, ids)
    infos: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def compute(step: int, blocks: list[torch.Tensor | None]) -> None:
        keys = blocks[0]
        assert keys is not None
        own_shard = step == 0
        block_k = min(k, len(keys) - own_shard)
        if errors or hi == lo or block_k <= 0:
            return
        try:
            found = knn_exact(rows, keys, block_k, exclude_self=own_shard, **options)
        except Exception as exc:  # reported after the ring: the other ranks still need this rank's sends
            errors.append(exc)
            return
        infos.append(found.info)
        top = found.indices + np.int32(_shard(num, ring.source(step), world)[0])
        held.append((found.scores, top) if not held else _merge_rows(*held.pop(), found.scores, top, k))

    circulate(ring, sizes, [own], compute)
    raise_together(errors[0] if errors else None, _B3_WHAT)
    if hi == lo:
        return np.empty((0, k), np.int32), np.empty((0, k), np.float32), {}
    scores, top = held[0]
    info = {**infos[0], "fp32_rows_redone": sum(i.get("fp32_rows_redone", 0) for i in infos),
            "rows_widened": sum(i.get("rows_widened", 0) for i in infos),
            "exchange": "ring", "ring_steps": world}  # fmt: skip
    return top, scores, info


#: Rows merged at a time: merging all rows at once held several (rows, 2k) sort temporaries (measured
#: +580 MiB per rank at 100k rows, k = 130).
_MERGE_ROWS = 8192


def _merge_rows(
    scores_a: np.ndarray, ids_a: np.ndarray, scores_b: np.ndarray, ids_b: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top min(k, a + b) of two disjoint (rows, ·) top lists per row by the tie rule, ``_MERGE_ROWS`` at a time."""
    width = min(k, scores_a.shape[1] + scores_b.shape[1])
    scores = np.empty((len(scores_a), width), dtype=np.float32)
    ids = np.empty((len(scores_a), width), dtype=np.int32)
    for lo in range(0, len(scores_a), _MERGE_ROWS):
        part = slice(lo, lo + _MERGE_ROWS)
        values, top = merge_topk(
            torch.from_numpy(scores_a[part]), torch.from_numpy(ids_a[part]),
            torch.from_numpy(scores_b[part]), torch.from_numpy(ids_b[part]), width,
        )  # fmt: skip
        scores[part], ids[part] = values.numpy(), top.to(torch.int32).numpy()
    return scores, ids


def _gather_parts(part: np.ndarray, lengths: list[int], dtype: torch.dtype) -> np.ndarray | None:
    """Every rank's (lengths[rank], ...) ``part``, concatenated in rank order on rank 0 (None elsewhere).

    ``dist.gather`` needs one shape on every rank, so each part travels padded to the longest, into one
    receive buffer whose rows are the result when no rank was padded (else copied out once). Rank 0 holds
    the buffer and at most one copy: the list of received tensors, their concatenation and an int64 round
    trip of the neighbour ids held ~3.4 result sizes (measured: ~640 MiB of rank 0's peak at 200k, W = 4).
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = comm_device()
    longest = max(max(lengths), 1)
    padded = torch.zeros((longest, *part.shape[1:]), dtype=dtype, device=dev)
    padded[: len(part)] = torch.as_tensor(part, device=dev)
    buffer = torch.empty((world, *padded.shape), dtype=dtype, device=dev) if rank == 0 else None
    dist.gather(padded, None if buffer is None else list(buffer.unbind(0)), dst=0)
    del padded
    if buffer is None:
        return None
    if all(length == longest for length in lengths):
        return buffer.reshape(-1, *buffer.shape[2:]).cpu().numpy()
    out = np.empty((sum(lengths), *buffer.shape[2:]), dtype=buffer[0, :0].cpu().numpy().dtype)
    starts = np.cumsum([0, *lengths])
    for r, length in enumerate(lengths):
        out[starts[r] : starts[r] + length] = buffer[r, :length].cpu().numpy()
    return out


def _gather(
    indices: np.ndarray, scores: np.ndarray, num_rows: int, k: int, info: dict[str, Any] | None = None
) -> KnnResult | None:
    """Concatenate every rank's (rows, k) shard on rank 0, in rank order; ``info``: rank 0's search info."""
    world = dist.get_world_size()
    lengths = _shard_sizes(num_rows, world)
    ids = _gather_parts(indices, lengths, torch.int32)  # key ids < N: the kNN's own int32
    values = _gather_parts(scores, lengths, torch.float32)
    if ids is None or values is None:
        return None
    return KnnResult(indices=ids, scores=values, info={**(info or {}), "world_size": world})


def _ivf_search(
    query: Any,
    positive: Any,
    ids: np.ndarray | None,
    k: int,
    options: dict[str, Any],
    knn_options: dict[str, Any] | None,
) -> _GroupShare:
    """This rank's share of the group's ``knn="ivf_torch"`` search, by a layout all the ranks build together.

    Rank 0 broadcasts the search options and its inputs' shape; every rank checks its own against it, then
    all build the layout together (:func:`~hardbatch.graph.ivf.ivf_layout` with a
    :class:`~hardbatch.distributed.WorkSplit`: the k-means iterations, the list and group assignment, group
    means and calibration rows in blocks dealt to the ranks), so
    every rank holds the single-process layout. The IVF groups are dealt to the ranks by the products their
    search computes (:func:`deal_by_cost`, the same on every rank) and every rank searches its groups
    against all the group's positives (:func:`~hardbatch.graph.ivf.search_groups`). A group's answer
    depends on the layout only, so the rows are the single-process ones. Where the layout says the exact
    search is cheaper (``exact_fallback``), the rows of the exact "read" search are this rank's share.

    Memory per rank: the keys resident, O(n·d) fp32 (+ a bf16 copy in bf16 mode), the layout O(n + L²),
    the calibration pools of its sampled rows, one IVF group's blocks and O(n·k / W) results. Time per rank:
    about 1/W of the set-up's k-means (O(256·L²·d) per iteration), assignment (O(n·L·d)) and calibration
    and of the search's products.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    shape = None if rank != 0 else (len(query), int(query.shape[1]))
    knn_options, shape = broadcast_from_rank0((knn_options, shape))
    raise_together(_attempt(_check_shape, query, positive, *shape)[1], _B3_WHAT)
    split = WorkSplit(_B3_WHAT, across_ranks=True)
    built, failure = _attempt(_build_layout, query, positive, ids, k, options, knn_options or {}, split)
    split.finish(failure)
    assert built is not None
    layout, key_t = built
    if layout.info["exact_fallback"]:
        del key_t
        num = shape[0] if ids is None else len(ids)
        lo, hi = _shard(num, rank, world)
        indices, scores, info = _search_shard(
            query, positive, ids, k, rank, world, {**options, "exchange": "read"}
        )
        counts = {"products": (hi - lo) * num, "fp32_rows_redone": info.get("fp32_rows_redone", 0),
                  "rows_widened": info.get("rows_widened", 0), "margin": info.get("margin", 0)}  # fmt: skip
        # _search_shard reported its outcome already; this collective only carries what the gather needs.
        reports = raise_together(None, _B3_WHAT, (hi - lo, counts))
        precision = info.get("precision", "fp32")
        return _GroupShare(np.arange(lo, hi), indices, scores, counts, precision, layout, reports)
    found, failure = _attempt(_search_dealt, query, ids, k, layout, options, key_t)
    # The outcome and each rank's (rows, counts), which the gather needs, in one collective.
    reports = raise_together(failure, _B3_WHAT, None if found is None else (len(found.row_ids), found.counts))
    assert found is not None
    return found._replace(reports=reports)


class _GroupShare(NamedTuple):
    """A rank's rows of one source group's IVF search (row ids local to the group)."""

    row_ids: np.ndarray
    indices: np.ndarray
    scores: np.ndarray
    counts: dict[str, int]
    precision: str
    layout: IvfLayout
    #: every rank's (rows, counts), in rank order (empty until the ranks have reported)
    reports: list[tuple[int, dict[str, int]]]


def _ivf_rows(query: Any, ids: np.ndarray | None) -> Any:
    """The group's rows, read one IVF group at a time."""
    return query if ids is None else RowSubset(np.asarray(query), ids)


def _ivf_parts(query: Any, positive: Any, ids: np.ndarray | None) -> tuple[Any, Any]:
    """The group's rows (:func:`_ivf_rows`) and its positives (held whole)."""
    return _ivf_rows(query, ids), positive if ids is None else take_rows(positive, ids)


def _build_layout(
    query: Any,
    positive: Any,
    ids: np.ndarray | None,
    k: int,
    options: dict[str, Any],
    knn_options: dict[str, Any],
    split: WorkSplit,
) -> tuple[IvfLayout, torch.Tensor]:
    """Every rank: the group's IVF layout (as :func:`~hardbatch.graph.ivf.knn_ivf` would build it, its
    steps shared by ``split``) and the resident keys."""
    rows, keys = _ivf_parts(query, positive, ids)
    layout_options = {
        key: value for key, value in knn_options.items() if key not in ("precision", "show_progress")
    }
    return ivf_layout(
        rows, keys, k, exclude_self=True, normalize=options["normalize"], device=options["device"],
        split=split, **{"seed": options["seed"], **layout_options},
    )  # fmt: skip


def _search_dealt(
    query: Any,
    ids: np.ndarray | None,
    k: int,
    layout: IvfLayout,
    options: dict[str, Any],
    key_t: torch.Tensor,
) -> _GroupShare:
    """The IVF groups :func:`deal_by_cost` gives this rank, searched against the resident keys ``key_t``."""
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = _ivf_rows(query, ids)  # the keys are resident already
    precision = resolve_precision(options["precision"], key_t.device)
    costs = layout.group_products(k, exclude_self=True)
    mine = np.flatnonzero((deal_by_cost(costs, world) == rank) & (costs > 0))
    found = search_groups(
        rows, key_t, k, layout, mine, exclude_self=True, precision=precision, normalize=options["normalize"],
        show_progress=options["show_progress"] if rank == 0 else False,
    )  # fmt: skip
    return _GroupShare(*found, precision, layout, [])


def _gather_groups(share: _GroupShare, num_rows: int, k: int) -> KnnResult | None:
    """Every rank's IVF rows on rank 0, placed by row id: the group's (n, k) result (None elsewhere)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    reports = share.reports
    assert len(reports) == world, "the ranks' reports did not travel with the search's outcome"
    lengths = [length for length, _ in reports]
    placed = _gather_parts(share.row_ids, lengths, torch.int64)
    indices = _gather_parts(share.indices, lengths, torch.int32)
    scores = _gather_parts(share.scores, lengths, torch.float32)
    if rank != 0 or placed is None or indices is None or scores is None:
        return None
    assert len(placed) == num_rows and np.bincount(placed, minlength=num_rows).max() == 1, (
        "rows lost or repeated"
    )
    result_ids = np.empty((num_rows, k), dtype=np.int32)
    result_scores = np.empty((num_rows, k), dtype=np.float32)
    result_ids[placed], result_scores[placed] = indices, scores
    counts = [c for _, c in reports]
    total = {"products": sum(c["products"] for c in counts),
             "fp32_rows_redone": sum(c["fp32_rows_redone"] for c in counts),
             "rows_widened": sum(c["rows_widened"] for c in counts),
             "margin": max(c["margin"] for c in counts)}  # fmt: skip
    info = finish_info({**share.layout.info, "precision": share.precision}, total, num_rows * num_rows)
    info.update(world_size=world, rank_products=[c["products"] for c in counts])
    return KnnResult(indices=result_ids, scores=result_scores, info=info)


def _attempt(work: Callable[..., T], *args: Any) -> tuple[T | None, BaseException | None]:
    """``(work(*args), None)``, or ``(None, the exception)``: a rank's part of a collective step."""
    try:
        return work(*args), None
    except Exception as exc:  # bad input, out of memory, a bug: every rank must hear of it
        return None, exc


class _Leader:
    """Rank 0's side of the request loop: a failure anywhere ends every rank's call with an error.

    The other ranks wait in a serve loop for rank 0's next header. Within a request every rank reports
    its outcome (:func:`hardbatch.distributed.raise_together`) before the results are gathered, so a rank
    that fails makes every rank raise at once (instead of leaving the others in the gather until the
    process group's timeout). A failure of rank 0 outside a request (its own checks, RCM, METIS...) is sent
    as a ``_FAIL`` header followed by the same report. ``shared`` is set while a report is being exchanged:
    the other ranks have then left their loop, and no further header may be sent.
    """

    def __init__(self, send_header: Callable[[int], None], what: str) -> None:
        self.send_header, self.what, self.shared = send_header, what, False

    def report(self, failure: BaseException | None) -> None:
        """Within a request: every rank's outcome; raises on every rank when one failed."""
        with self.collective():
            raise_together(failure, self.what)

    @contextlib.contextmanager
    def collective(self) -> Iterator[None]:
        """Within a request: every report raised inside is one the other ranks take part in."""
        self.shared = True
        yield
        self.shared = False

    def run(self, work: Callable[[], T]) -> T:
        """Rank 0's ``work()``; afterwards the other ranks stop, or raise rank 0's failure."""
        try:
            result = work()
        except BaseException as exc:
            if not self.shared:
                self.send_header(_FAIL)
                raise_together(exc, self.what)  # re-raises ``exc`` here; the other ranks raise its report
            raise
        self.send_header(_STOP)
        return result


def _follow(command: int, failure: BaseException | None, what: str) -> bool:
    """Ranks > 0: True to serve the request; False on stop; raises rank 0's (or this rank's) failure."""
    if command == _FAIL:
        raise_together(failure, what)  # rank 0 reports its failure: raise it here
        raise RuntimeError("rank 0 sent a failure without reporting one")  # unreachable unless a bug
    if command == _STOP:
        if failure is not None:  # this rank failed before any request needed it
            raise failure
        return False
    return True


def _serve(query: Any, positive: Any, options: dict[str, Any]) -> None:
    """Ranks > 0: answer rank 0's search requests until it sends the stop (or failure) message."""
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = comm_device()
    while True:
        header = torch.zeros(3, dtype=torch.int64, device=dev)
        dist.broadcast(header, src=0)
        command, k, count = (int(v) for v in header.tolist())
        if not _follow(command, None, _B3_WHAT):
            return
        ids = None
        if count >= 0:
            buffer = torch.empty(count, dtype=torch.int64, device=dev)
            dist.broadcast(buffer, src=0)
            ids = buffer.cpu().numpy()
        num_rows = len(query) if ids is None else len(ids)
        if options["knn"] == "ivf_torch":
            _gather_groups(_ivf_search(query, positive, ids, k, options, None), num_rows, k)
            continue
        indices, scores, _ = _search_shard(query, positive, ids, k, rank, world, options)
        _gather(indices, scores, num_rows, k)


def mine_b3_distributed(
    query_emb: np.ndarray | torch.Tensor,
    positive_emb: np.ndarray | torch.Tensor,
    *,
    knn: str = "exact",
    device: str | torch.device | None = "auto",
    chunk_size: int | None = None,
    precision: str = "auto",
    key_block_size: int | str | None = None,
    memory_budget: int | str | None = None,
    exchange: str = "read",
    **mine_options: Any,
) -> BatchPlan | None:
    """:func:`~hardbatch.mining.b3.mine_b3` with the teacher ranking split over the ranks of the default group.

    Call it on every rank with the same inputs (e.g. the same memory-mapped ``.npy`` files) after
    ``torch.distributed.init_process_group``; a single process (no group initialised) mines alone.

    Args:
        query_emb: (N, d) float teacher query embeddings (numpy, memory-mapped numpy or torch).
        positive_emb: (N, d) float teacher positive embeddings, aligned with the queries.
        knn: "exact" or "ivf_torch" (:data:`DISTRIBUTED_KNN`); ivf_torch's layout is built on rank 0 and its
            groups are spread over the ranks (``faiss_options`` and ``recall_target`` apply as in one process).
        device: device of each rank's search (e.g. "cuda:<local rank>" under NCCL).
        chunk_size: rows per similarity block.
        precision: matmul precision of the search (answer is the fp32 one).
        key_block_size: positives each rank holds at a time (None: all of them). Every rank reads the
            positives block by block from ``positive_emb`` (the same memory-mapped file on a shared
            filesystem), so no rank holds all of them; the ranking is unchanged. "auto": chosen from
            ``memory_budget`` by every rank alike (:func:`hardbatch.graph.knn.knn_exact`).
        memory_budget: bytes (or "4GiB") each rank's key and score blocks may take; alone it means
            ``key_block_size="auto"``.
        exchange: how the positives reach the ranks. "read": every rank reads all of them itself (from a
            file every rank can read). "ring": rank r reads only its shard, rows [r·n/W, (r+1)·n/W) of each
            group, and the shards travel around the ring (P2P, overlapped with the search), so a rank holds
            two shards at a time, O(2·n/W·d), and reads n/W rows; with ``key_block_size`` each shard is
            searched in blocks as well. Same plan either way.
        **mine_options: every other :func:`~hardbatch.mining.b3.mine_b3` argument (batch_size, skip...).

    Returns:
        The plan on rank 0 (``params["world_size"]`` set), None on the other ranks.

    Raises:
        ConfigError: a faiss ``knn`` backend, an unknown ``exchange``, ivf_torch with ``exchange="ring"`` or
            key blocks. Anything a rank raises while ranking (bad input, out of memory) or rank 0 raises
            while mining is raised on every rank at once (:func:`hardbatch.distributed.raise_together`): the
            same class and message for a :class:`~hardbatch.errors.HardbatchError`, else a RuntimeError
            naming the failed rank.
    """
    from hardbatch.mining.b3 import mine_b3

    if knn not in DISTRIBUTED_KNN:
        raise ConfigError(
            f"distributed mining supports knn={' or '.join(map(repr, DISTRIBUTED_KNN))}, got {knn!r}"
        )
    check_exchange(exchange)
    if knn == "ivf_torch" and exchange != "read":
        raise ConfigError("knn='ivf_torch' probes lists across all positives: use exchange='read'")
    if knn == "ivf_torch" and (key_block_size is not None or memory_budget is not None):
        raise ConfigError("key_block_size and memory_budget apply to knn='exact' only, got knn='ivf_torch'")
    options = {"device": device, "chunk_size": chunk_size, "precision": precision, "normalize": True,
               "key_block_size": key_block_size, "memory_budget": memory_budget, "exchange": exchange,
               "knn": knn, "seed": int(mine_options.get("seed", 0))}  # fmt: skip
    options["normalize"] = bool(mine_options.get("normalize", True))
    options["show_progress"] = mine_options.get("show_progress")
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        plan = mine_b3(query_emb, positive_emb, knn=knn, device=device, chunk_size=chunk_size,
                       precision=precision, key_block_size=key_block_size, memory_budget=memory_budget,
                       **mine_options)  # fmt: skip
        plan.params["world_size"] = 1
        return plan
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank != 0:
        _serve(query_emb, positive_emb, options)
        return None
    dev = comm_device()
    num_examples = len(query_emb)
    leader = _Leader(
        lambda command: dist.broadcast(torch.tensor([command, 0, 0], dtype=torch.int64, device=dev), src=0),
        _B3_WHAT,
    )

    def search(q_part: Any, p_part: Any, k: int, ids: np.ndarray, knn_options: dict[str, Any]) -> KnnResult:
        whole = len(ids) == num_examples
        header = torch.tensor([_SEARCH, k, -1 if whole else len(ids)], dtype=torch.int64, device=dev)
        dist.broadcast(header, src=0)
        if not whole:
            dist.broadcast(torch.as_tensor(np.asarray(ids, dtype=np.int64), device=dev), src=0)
        group_ids = None if whole else ids
        if knn == "ivf_torch":
            with leader.collective():
                share = _ivf_search(query_emb, positive_emb, group_ids, k, options, knn_options)
            gathered = _gather_groups(share, len(q_part), k)
        else:
            with leader.collective():
                indices, scores, info = _search_shard(
                    query_emb, positive_emb, group_ids, k, 0, world, options
                )
            gathered = _gather(indices, scores, len(q_part), k, info)
        assert gathered is not None
        return gathered

    plan = leader.run(
        lambda: mine_b3(query_emb, positive_emb, knn=knn, device=device, chunk_size=chunk_size,
                        precision=precision, key_block_size=key_block_size, memory_budget=memory_budget,
                        neighbor_search=search, **mine_options)
    )  # fmt: skip
    plan.params["world_size"] = world
    return plan


def _local_graph(
    rows: Any, keys: Any, threshold: float, row_offset: int, num_rows: int, options: dict[str, Any]
) -> sp.csr_array | None:
    """This rank's (rows, N) slice of the GCBS threshold graph; None when it alone breaks the density cap.

    ``rows`` and ``keys`` come from :func:`_graph_inputs`: normalised tensors, or with key blocks the arrays
    as given (normalised block by block, the same bits per row).
    """
    from hardbatch.graph.threshold import DenseGraphError, threshold_graph

    if len(rows) == 0:
        return sp.csr_array((0, len(keys)), dtype=np.int8)
    # The single-process cap is "total edges <= int(max_avg_degree · N)". A slice over that total (slack of
    # one edge against rounding) means the total is too, so stopping early here never changes the answer;
    # rank 0 checks the exact total after the gather.
    local_degree = (options["max_avg_degree"] * num_rows + 1) / len(rows)
    try:
        return threshold_graph(
            rows, keys, threshold, normalize=_blocked(options), drop_diagonal=True, row_offset=row_offset,
            max_avg_degree=local_degree, **_pass_options(options),
        )  # fmt: skip
    except DenseGraphError:  # other errors (bad options) are raised as they are
        return None


def _pass_options(options: dict[str, Any]) -> dict[str, Any]:
    """The :func:`~hardbatch.graph.threshold.threshold_graph` options every slice shares (rank 0's bar only)."""
    keys = ("chunk_size", "device", "precision", "key_block_size", "memory_budget")
    return {
        **{key: options[key] for key in keys},
        "show_progress": options["show_progress"] if dist.get_rank() == 0 else False,
    }


def _blocked(options: dict[str, Any]) -> bool:
    return options["key_block_size"] is not None or options["memory_budget"] is not None


def _graph_inputs(query: Any, positive: Any, lo: int, hi: int, options: dict[str, Any]) -> tuple[Any, Any]:
    """This rank's query rows [lo, hi) and the positives it starts from, as the graph pass reads them.

    "ring": its own rows and positive shard, normalised (row-wise: the bits of normalising all rows), the
    shard on the communication device to travel. Key blocks: the arrays as given (read block by block).
    Otherwise the rows and all positives, normalised.
    """
    from hardbatch.graph.threshold import normalize_rows

    search_device = resolve_device(options["device"])
    if options["exchange"] == "ring":
        own = normalize_rows(positive[lo:hi], search_device).to(comm_device())
        return normalize_rows(query[lo:hi], search_device), own
    if _blocked(options):  # read block by block where needed, never all positives at once
        return query[lo:hi], positive
    return normalize_rows(query[lo:hi], search_device), normalize_rows(positive, search_device)


def _ring_graph(
    rows: torch.Tensor, own: torch.Tensor, threshold: float, num_rows: int, options: dict[str, Any]
) -> tuple[sp.csr_array | None, BaseException | None]:
    """This rank's slice of the threshold graph, the normalised positive shards passed around the ring.

    Every arriving shard (rank s's positives, columns [s·N/W, (s+1)·N/W)) is thresholded against this rank's
    rows (the diagonal dropped in its own shard only); the slices are put side by side in column order, so
    the slice is :func:`_local_graph`'s. The density cap counts the edges of all shards, with the same slack
    as :func:`_local_graph`. A failure on one shard stops this rank's work but not its sends.

    Returns:
        ``(slice, None)``; ``(None, None)`` when the slice alone breaks the density cap; ``(None, error)``.
    """
    from hardbatch.graph.threshold import DenseGraphError, threshold_graph

    world = dist.get_world_size()
    ring = Ring()
    sizes = _shard_sizes(num_rows, world)
    allowed = options["max_avg_degree"] * num_rows + 1  # the slack of _local_graph
    parts: dict[int, sp.csr_array] = {}
    state: dict[str, Any] = {"edges": 0, "dense": False, "error": None}

    def compute(step: int, blocks: list[torch.Tensor | None]) -> None:
        keys, source = blocks[0], ring.source(step)
        assert keys is not None
        if state["dense"] or state["error"] is not None:
            return
        if len(rows) == 0 or len(keys) == 0:
            parts[source] = sp.csr_array((len(rows), len(keys)), dtype=np.int8)
            return
        remaining = allowed - state["edges"]
        if remaining <= 0:
            state["dense"] = True
            return
        try:
            part = threshold_graph(
                rows, keys, threshold, normalize=False, drop_diagonal=step == 0,
                max_avg_degree=remaining / len(rows), **_pass_options(options),
            )  # fmt: skip
        except DenseGraphError:
            state["dense"] = True
            return
        except Exception as exc:  # reported after the ring: the other ranks still need this rank's sends
            state["error"] = exc
            return
        parts[source] = part
        state["edges"] += part.nnz

    circulate(ring, sizes, [own], compute)
    if state["error"] is not None or state["dense"]:
        return None, state["error"]
    if len(rows) == 0:
        return sp.csr_array((0, num_rows), dtype=np.int8), None
    graph = sp.csr_array(sp.hstack([parts[source] for source in range(world)], format="csr"), dtype=np.int8)
    graph.sort_indices()
    return graph, None


def _graph_slice(
    prepared: tuple[Any, Any] | None,
    failure: BaseException | None,
    query: Any,
    positive: Any,
    threshold: float,
    options: dict[str, Any],
    report: Callable[[BaseException | None], None],
) -> sp.csr_array | None:
    """This rank's slice of the graph, or None; ``prepared`` (or its ``failure``) from :func:`_graph_inputs`.

    ``report`` is the collective every rank's outcome goes through (each rank raises if one failed): after
    the slice, and in a ring also before the first shard travels (a rank whose inputs have another shape
    never sends).
    """
    num_rows, dim = options["shape"]
    lo = _shard(num_rows, dist.get_rank(), dist.get_world_size())[0]
    if failure is None:
        failure = _attempt(_check_shape, query, positive, num_rows, dim)[1]
    local = None
    if options["exchange"] == "ring":
        report(failure)
        assert prepared is not None
        local, failure = _ring_graph(*prepared, threshold, num_rows, options)
    elif failure is None:
        assert prepared is not None
        local, failure = _attempt(_local_graph, *prepared, threshold, lo, num_rows, options)
    report(failure)
    return local


def _slice_edges(local: sp.csr_array | None, lo: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A row slice's edges as (global row, column) coordinates (None stays None: the slice is too dense)."""
    if local is None:
        return None
    rows = np.repeat(np.arange(local.shape[0], dtype=np.int64), np.diff(local.indptr)) + lo
    return rows, local.indices.astype(np.int64)


def _gather_graph(
    local: sp.csr_array | None, num_rows: int, threshold: float, max_avg_degree: float
) -> sp.csr_array | None:
    """Every rank's graph slice (rows [lo, hi) of :func:`_shard`), as one graph on rank 0 (None elsewhere)."""
    lo = _shard(num_rows, dist.get_rank(), dist.get_world_size())[0]
    return _gather_edges(_slice_edges(local, lo), num_rows, threshold, max_avg_degree)


def _gather_edges(
    edges: tuple[np.ndarray, np.ndarray] | None, num_rows: int, threshold: float, max_avg_degree: float
) -> sp.csr_array | None:
    """Every rank's edges, (row, column) coordinates with ascending columns within each row's run (a row's
    edges all on one rank), as the (N, N) CSR graph on rank 0 (None on the other ranks).

    The edge counts travel first (``all_gather``: every rank needs the longest for the padded
    ``dist.gather`` of (row, column) pairs); a count of -1 (``edges`` None) says that rank's share alone is
    too dense. A stable sort on the row puts the shares in CSR order (O(nnz) when they already are: row
    slices in rank order).

    Raises:
        ConfigError (rank 0): more than ``max_avg_degree · N`` edges in all.
    """
    from hardbatch.graph.ivf_threshold import edge_coordinates_to_csr
    from hardbatch.graph.threshold import _check_density

    rank, world = dist.get_rank(), dist.get_world_size()
    dev = comm_device()
    count = torch.tensor([-1 if edges is None else len(edges[0])], dtype=torch.int64, device=dev)
    counts_t = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts_t, count)
    counts = [int(c.item()) for c in counts_t]
    max_edges = int(max_avg_degree * num_rows)
    if min(counts) < 0 or sum(counts) > max_edges:
        if rank == 0:
            _check_density(max_edges + 1, max_edges, threshold, max_avg_degree)
        return None
    longest = max(counts)
    pairs = torch.zeros(longest, 2, dtype=torch.int64, device=dev)
    if edges is not None and len(edges[0]):
        pairs[: len(edges[0])] = torch.as_tensor(np.stack(edges, axis=1), device=dev)
    gathered = [torch.empty_like(pairs) for _ in range(world)] if rank == 0 else None
    if longest:
        dist.gather(pairs, gathered, dst=0)
    if rank != 0:
        return None
    parts = [
        gathered[r][: counts[r]].cpu().numpy() if longest else np.empty((0, 2), np.int64)
        for r in range(world)
    ]
    both = np.concatenate(parts)
    return edge_coordinates_to_csr(both[:, 0], both[:, 1].astype(np.int32), (num_rows, num_rows))


def _ivf_graph_share(
    query: Any, positive: Any, threshold: float, options: dict[str, Any]
) -> tuple[tuple[np.ndarray, np.ndarray] | None, dict[str, Any]]:
    """This rank's edges of the ``graph_method="ivf_torch"`` threshold graph (for :func:`_gather_edges`:
    None when its share alone is too dense) and the search's ``info`` (the same on every rank).

    Rank 0 broadcasts the search options :func:`~hardbatch.mining.gcbs.mine_gcbs` resolved (``nlist``,
    ``nprobe``, ``recall_target``, ``seed``); every rank checks its
    inputs' shape, then all build the layout together (:func:`~hardbatch.graph.ivf_threshold.threshold_layout`
    with a :class:`~hardbatch.distributed.WorkSplit`: k-means, list and group assignment, group means and
    calibration rows dealt in fixed blocks), so every rank holds the single-process layout. The IVF groups
    are dealt by the products their search computes (:func:`deal_by_cost`); each rank thresholds its groups
    against all positives. A group's edges depend on the layout only, so the gathered graph is the
    single-process one. Where the layout says the exact pass is cheaper (``exact_fallback``), every rank
    builds its row slice of the exact graph instead. Every failure up to the edges is raised on every rank.

    Memory per rank: all positives resident, O(N·d) fp32 (+ a bf16 copy in bf16 mode), the layout
    O(N + L²), one group's blocks and its share of the edges, O(nnz / W); rank 0 also the gathered O(nnz).
    """
    from hardbatch.graph.ivf_threshold import threshold_groups, threshold_layout
    from hardbatch.graph.threshold import DenseGraphError

    rank, world = dist.get_rank(), dist.get_world_size()
    num_rows, dim = options["shape"]
    ivf_options = broadcast_from_rank0(options["ivf"] if rank == 0 else None)
    raise_together(_attempt(_check_shape, query, positive, num_rows, dim)[1], _GCBS_WHAT)
    split = WorkSplit(_GCBS_WHAT, across_ranks=True)
    device = resolve_device(options["device"])

    def build() -> tuple[IvfLayout, torch.Tensor]:
        return threshold_layout(query, positive, threshold, drop_diagonal=True, normalize=True, device=device,
                                split=split, **ivf_options)  # fmt: skip

    built, failure = _attempt(build)
    split.finish(failure)
    assert built is not None
    layout, key_t = built
    precision = resolve_precision(options["precision"], device)
    info = {**layout.info, "precision": precision}
    if layout.info["exact_fallback"]:
        del key_t
        read = {**options, "exchange": "read"}
        lo, hi = _shard(num_rows, rank, world)
        prepared, failure = _attempt(_graph_inputs, query, positive, lo, hi, read)
        report = lambda failure: raise_together(failure, _GCBS_WHAT)  # noqa: E731
        local = _graph_slice(prepared, failure, query, positive, threshold, read, report)
        return _slice_edges(local, lo), {**info, "searched_fraction": 1.0, "world_size": world}
    groups, keys = layout.buckets()
    costs = groups.products(layout.nprobe, keys, 0)
    mine = np.flatnonzero((deal_by_cost(costs, world) == rank) & (costs > 0))

    def search() -> tuple[tuple[np.ndarray, np.ndarray] | None, dict[str, int]]:
        try:
            row_idx, col_idx, counts = threshold_groups(
                query, key_t, threshold, layout, mine, drop_diagonal=True, precision=precision, normalize=True,
                max_avg_degree=options["max_avg_degree"], show_progress=options["show_progress"] if rank == 0 else False,
            )  # fmt: skip
        except DenseGraphError:  # this share alone breaks the cap: the gather says so on rank 0
            return None, {"products": 0, "bf16_groups": 0}
        return (row_idx.astype(np.int64), col_idx.astype(np.int64)), counts

    found, failure = _attempt(search)
    # The outcome and every rank's counts travel together (one collective).
    every = raise_together(failure, _GCBS_WHAT, None if found is None else found[1])
    assert found is not None
    rank_products = [int(counts["products"]) for counts in every]
    info.update(searched_fraction=round(sum(rank_products) / max(1, num_rows * num_rows), 4),
                bf16_groups=sum(int(counts["bf16_groups"]) for counts in every), rank_products=rank_products,
                world_size=world)  # fmt: skip
    return found[0], info


def _check_shape(query: Any, positive: Any, num_rows: int, dim: int) -> None:
    """This rank's inputs have rank 0's shape (N, d): a rank reading another file fails, not mines it."""
    rank = dist.get_rank()
    for name, array in (("query", query), ("positive", positive)):
        shape = tuple(array.shape)
        if shape != (num_rows, dim):
            raise DataError(
                f"{name} embeddings on rank {rank}: shape {shape}, but rank 0 mines ({num_rows}, {dim}); "
                "every rank must read the same embeddings"
            )


def _serve_graph(query: Any, positive: Any, options: dict[str, Any]) -> None:
    """Ranks > 0: build this rank's slice of the GCBS graph when rank 0 sends the threshold, until stop."""
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = comm_device()
    lo, hi = _shard(len(query), rank, world)
    prepared, failure = None, None
    if options["graph_method"] == "exact":
        # Read (and normalised) while rank 0 estimates the threshold; row-wise, so the bits are rank 0's.
        prepared, failure = _attempt(_graph_inputs, query, positive, lo, hi, options)
    while True:
        header = torch.zeros(4, dtype=torch.float64, device=dev)
        dist.broadcast(header, src=0)
        command, threshold = int(header[0].item()), float(header[1].item())
        if not _follow(command, failure, _GCBS_WHAT):
            return
        options = {**options, "shape": (int(header[2].item()), int(header[3].item()))}
        report = lambda failure: raise_together(failure, _GCBS_WHAT)  # noqa: E731
        if options["graph_method"] == "ivf_torch":
            edges, _ = _ivf_graph_share(query, positive, threshold, options)
            _gather_edges(edges, options["shape"][0], threshold, options["max_avg_degree"])
            continue
        local = _graph_slice(prepared, failure, query, positive, threshold, options, report)
        _gather_graph(local, options["shape"][0], threshold, options["max_avg_degree"])


def mine_gcbs_distributed(
    query_emb: np.ndarray | torch.Tensor,
    positive_emb: np.ndarray | torch.Tensor,
    batch_size: int,
    *,
    graph_method: str = "exact",
    device: str | torch.device | None = "auto",
    chunk_size: int = 2048,
    max_avg_degree: float = 1024.0,
    precision: str = "auto",
    key_block_size: int | str | None = None,
    memory_budget: int | str | None = None,
    show_progress: bool | None = None,
    exchange: str = "read",
    **gcbs_options: Any,
) -> GCBSResult | None:
    """:func:`~hardbatch.mining.gcbs.mine_gcbs` with the threshold graph split by query rows over the ranks.

    Call it on every rank with the same inputs after ``torch.distributed.init_process_group``; a single
    process (no group initialised) mines alone. Rank 0 runs :func:`~hardbatch.mining.gcbs.mine_gcbs`
    unchanged up to the threshold (the same sampled quantile estimate, same seed, on rank 0 only, so the
    threshold is the single-process one), broadcasts it as float64, and every rank r builds rows
    ``[r·N/W, (r+1)·N/W)`` of the graph against all positives
    (:func:`~hardbatch.graph.threshold.threshold_graph` with ``row_offset``, so the diagonal is the global
    one); the slices are gathered to rank 0, which symmetrises, orders (RCM) and batches as one process.

    Cost per rank: time O(N²·d / W) for the graph (rank 0 also O(sample_size·d) for the threshold and
    O(nnz log Δ) for RCM); memory O(N·d) for the positives, O(chunk_size·N) for one block and O(nnz / W)
    for its slice; rank 0 also holds the query embeddings, W times the largest slice while gathering
    (O(nnz) for balanced slices) and the O(N + nnz) graph. With key blocks of B: O(B·d + chunk_size·B)
    instead of O(N·d + chunk_size·N) on every rank, and rank 0 holds no embeddings whole either.

    Args:
        query_emb: (N, d) float query embeddings (numpy, memory-mapped numpy or torch).
        positive_emb: (N, d) float positive embeddings, row i the positive of query i.
        batch_size: examples per batch.
        graph_method: "exact" or "ivf_torch" (the grouped IVF layout built by the ranks together, its
            groups dealt to them; ``nlist``, ``nprobe`` and ``recall_target`` in ``gcbs_options`` as in one process;
            with ``exchange="read"`` and without key blocks). faiss's "ivf" is not distributed.
        device: device of each rank's similarity pass (e.g. "cuda:<local rank>" under NCCL).
        chunk_size: rows per similarity block.
        max_avg_degree: refuse graphs denser than this, as one process does.
        precision: matmul precision of every rank's graph pass (the graph is the fp32 one).
        key_block_size: positives each rank holds at a time (None: all; "auto": from ``memory_budget``).
            Every rank reads them block by block from ``positive_emb`` (the same memory-mapped file on a
            filesystem the ranks share); the graph is unchanged.
        memory_budget: bytes (or "4GiB") each rank's key, row and score blocks may take; alone it means
            ``key_block_size="auto"``.
        show_progress: rank 0's progress bar.
        exchange: "read" (every rank reads all positives) or "ring" (rank r reads and normalises only rows
            [r·N/W, (r+1)·N/W) of both inputs; the normalised positive shards circulate, two held at a
            time, O(2·N/W·d)); the same graph either way.
        **gcbs_options: every other :func:`~hardbatch.mining.gcbs.mine_gcbs` argument (quantile, seed...).

    Returns:
        The :class:`~hardbatch.mining.gcbs.GCBSResult` on rank 0 (``params["world_size"]`` set, so its
        plan records it), None on the other ranks.

    Raises:
        ConfigError: ``graph_method="ivf"``, an unknown ``exchange``, ivf_torch with a ring or key blocks.
        DataError: a rank's embeddings differ in shape from rank 0's (raised on every rank).
        Exception: anything :func:`~hardbatch.mining.gcbs.mine_gcbs` raises on rank 0, or any rank raises
            while building its slice, is raised on every rank at once (see "Failures" in the module
            docstring): the same class and message for a :class:`~hardbatch.errors.HardbatchError`, a
            RuntimeError naming the failed rank otherwise.
    """
    from hardbatch.mining.gcbs import mine_gcbs

    if graph_method not in DISTRIBUTED_GRAPH_METHODS:
        raise ConfigError(
            f"distributed GCBS supports graph_method={' or '.join(map(repr, DISTRIBUTED_GRAPH_METHODS))}, "
            f"got {graph_method!r}"
        )
    check_exchange(exchange)
    if graph_method == "ivf_torch" and exchange != "read":
        raise ConfigError("graph_method='ivf_torch' probes lists across all positives: use exchange='read'")
    common = dict(
        device=device, chunk_size=chunk_size, max_avg_degree=max_avg_degree, show_progress=show_progress,
        precision=precision, key_block_size=key_block_size, memory_budget=memory_budget,
    )  # fmt: skip
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        result = mine_gcbs(
            query_emb, positive_emb, batch_size, graph_method=graph_method, **common, **gcbs_options
        )
        result.params["world_size"] = 1
        return result
    if graph_method == "ivf_torch" and (key_block_size is not None or memory_budget is not None):
        # mine_gcbs's own check, made here too: the other ranks never call it
        raise ConfigError("key_block_size and memory_budget apply to graph_method='exact' only")
    rank, world = dist.get_rank(), dist.get_world_size()
    served = {**common, "exchange": exchange, "graph_method": graph_method}
    if rank != 0:
        _serve_graph(query_emb, positive_emb, served)
        return None
    dev = comm_device()

    def send(command: int, threshold: float = 0.0, shape: tuple[int, int] = (0, 0)) -> None:
        header = torch.tensor([command, threshold, *shape], dtype=torch.float64, device=dev)
        dist.broadcast(header, src=0)

    leader = _Leader(send, _GCBS_WHAT)

    def search(x: Any, y: Any, threshold: float, **ivf: Any) -> tuple[sp.csr_array, dict[str, Any]]:
        # ivf: the search options mine_gcbs resolved (none for the exact graph), sent on by rank 0
        shape = (len(x), int(x.shape[1]))
        send(_GRAPH, threshold, shape)
        options = {**served, "shape": shape, "ivf": ivf}
        info: dict[str, Any] = {}
        if graph_method == "ivf_torch":
            with leader.collective():
                edges, info = _ivf_graph_share(x, y, threshold, options)
            graph = _gather_edges(edges, len(x), threshold, max_avg_degree)
        else:
            prepared, failure = _attempt(_graph_inputs, x, y, *_shard(len(x), 0, world), options)
            local = _graph_slice(prepared, failure, x, y, threshold, options, leader.report)
            graph = _gather_graph(local, len(x), threshold, max_avg_degree)
        assert graph is not None
        return graph, info

    result = leader.run(
        lambda: mine_gcbs(query_emb, positive_emb, batch_size, graph_method=graph_method, graph_search=search,
                          **common, **gcbs_options)
    )  # fmt: skip
    result.params["world_size"] = world
    return result


def deal_by_cost(costs: Sequence[int] | np.ndarray, world: int) -> np.ndarray:
    """The rank of every item: costliest first, each to the least loaded rank (longest processing time).

    Deterministic (ties: lower item index first, lower rank first), so every rank computes the same
    assignment from the same costs; the busiest rank carries at most 4/3 of the optimum. O(C log C + C · W)
    for C items.

    Args:
        costs: (C,) non-negative work per item (e.g. the products an IVF group's search computes).
        world: W, the number of ranks.

    Returns:
        (C,) int64, one rank per item.

    Example:
        >>> deal_by_cost([5, 9, 2, 4], 2).tolist()
        [1, 0, 0, 1]
    """
    costs = np.asarray(costs, dtype=np.int64)
    load, owner = np.zeros(world, dtype=np.int64), np.zeros(len(costs), dtype=np.int64)
    for index in np.lexsort((np.arange(len(costs)), -costs)):
        target = int(np.argmin(load))  # the first of the least loaded ranks
        owner[index] = target
        load[target] += costs[index]
    return owner


def assign_shards(sizes: Sequence[int], world: int) -> list[int]:
    """The rank of every shard: largest first, each to the least loaded rank, load = Σ s² (the ranking).

    Deterministic (ties: lower shard index first, lower rank first), so every rank computes the same
    assignment from the same sizes. O(C · W) for C shards.

    Args:
        sizes: examples per shard, in shard order.
        world: W, the number of ranks.

    Returns:
        One rank per shard.

    Example:
        >>> assign_shards([100, 100, 100, 50, 50], 2)
        [0, 1, 0, 1, 1]
    """
    return deal_by_cost([int(size) ** 2 for size in sizes], world).tolist()


def _mine_share(
    run: HierarchicalRun, query: Any, positive: Any, shards: list[Shard], shape: tuple[int, int]
) -> dict[int, ShardResult]:
    """This rank's shards, mined (after the check that its inputs have rank 0's shape)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    _check_shape(query, positive, *shape)
    owner = assign_shards([len(shard.ids) for shard in shards], world)
    return {i: run.mine(query, positive, shard) for i, shard in enumerate(shards) if owner[i] == rank}


def mine_b3_hierarchical_distributed(
    query_emb: np.ndarray | torch.Tensor, positive_emb: np.ndarray | torch.Tensor, **options: Any
) -> BatchPlan | None:
    """:func:`~hardbatch.mining.hierarchical.mine_b3_hierarchical` with its shards spread over the ranks.

    Call it on every rank with the same inputs (e.g. the same memory-mapped ``.npy`` files) and options
    after ``torch.distributed.init_process_group``; a single process (no group initialised) mines alone.
    Rank 0 cuts the coarse shards (k-means: its float sums may depend on threads, so it runs once) and
    broadcasts them; each rank mines the shards :func:`assign_shards` gives it, in one process each
    (any ``knn`` backend, key blocks...); the shard results are gathered to rank 0, which merges them in
    shard order with the single-process code, so the plan is the single-process one (``world_size`` apart).

    Cost per rank: time Σ_own O(s² · d) ≈ O(N · s · d / W) for balanced shards; memory O(s · (d + m)) for
    one shard at a time (a memory-mapped input is read at its shards' rows only) + O(N) for the shard ids.
    Rank 0 also cuts the shards (O(N · C · d) assignment, streamed in blocks), receives W result shares
    (O(N) int32 in all) and merges (input hashes and hardness: O(N · d) streamed, O(N) for the plan).

    Args:
        query_emb: (N, d) float teacher query embeddings (numpy, memory-mapped numpy or torch).
        positive_emb: (N, d) float teacher positive embeddings.
        **options: :func:`~hardbatch.mining.hierarchical.mine_b3_hierarchical`'s keyword arguments
            (batch_size, shard_size, sources, positive_texts, skip...), the same on every rank.

    Returns:
        The plan on rank 0 (``params["world_size"]`` set; ``stats["rank_seconds"]``: shard mining seconds
        per rank), None on the other ranks.

    Raises:
        Exception: anything a rank raises (bad options, embeddings of another shape than rank 0's, a
            shard's mining, rank 0's cut or merge) is raised on every rank at once
            (:func:`hardbatch.distributed.raise_together`): the same class and message for a
            :class:`~hardbatch.errors.HardbatchError`, a RuntimeError naming the failed rank otherwise.
    """
    from hardbatch.mining.hierarchical import HierarchicalRun, mine_b3_hierarchical

    if not is_distributed():
        plan = mine_b3_hierarchical(query_emb, positive_emb, **options)
        plan.params["world_size"] = 1
        return plan
    started = time.perf_counter()
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank != 0:
        options = {**options, "show_progress": False}
    run, failure = _attempt(lambda: HierarchicalRun.of(len(query_emb), options, int(query_emb.shape[1])))
    cut = None
    if rank == 0 and failure is None:  # the shape travels with the shards: every rank checks its own
        cut, failure = _attempt(
            lambda: ((len(query_emb), int(query_emb.shape[1])), run.shards(query_emb, positive_emb))
        )
    raise_together(failure, "cutting the hierarchical shards")
    shape, shards = broadcast_from_rank0(cut)
    share, failure = _attempt(_mine_share, run, query_emb, positive_emb, shards, shape)
    raise_together(failure, "mining its hierarchical shards")
    shares: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(share, shares, dst=0)
    plan = None
    if rank == 0:
        results = {index: result for part in shares for index, result in part.items()}
        ordered = [results[index] for index in range(len(shards))]
        plan, failure = _attempt(lambda: run.merge(query_emb, positive_emb, shards, ordered, started=started))
    raise_together(failure, "merging the hierarchical shard plans")
    if plan is not None:
        plan.params["world_size"] = world
        seconds = plan.stats["rank_seconds"]
        seconds += [0.0] * (world - len(seconds))  # ranks left without a shard (fewer shards than ranks)
    return plan
