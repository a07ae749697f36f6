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
ranks share (or a copy per node); no ring exchange of positive blocks is needed then, and none is done. Its
row shard (N/W query rows) is re-read once per block.
Only ``knn="exact"`` is distributed (an approximate index would be built on every rank).

GCBS (:func:`mine_gcbs_distributed`) splits its threshold graph the same way: rank 0 runs
:func:`~hardbatch.mining.gcbs.mine_gcbs` up to the threshold (the sampled global quantile, computed on rank 0
only, so it is the single-process threshold), broadcasts it (float64, exact), every rank builds rows
``[r·N/W, (r+1)·N/W)`` of the graph against all positives, and the slices are gathered to rank 0 (edge counts
by ``all_gather``, then padded (row, column) pairs by ``dist.gather``), which orders and batches as one
process. Cost per rank: time O(N²·d / W); memory O(N·d) for the positives, O(chunk·N) for one block and
O(nnz / W) for its slice; rank 0 also O(sample·d) time for the threshold, W × the largest slice while
gathering, the O(N + nnz) graph and RCM.

Embeddings computed by the ranks themselves (``torchrun ... mine b3 DATA`` without embedding files) come from
:mod:`hardbatch.embed.sharded`, which gives every rank the full single-process query and positive matrices.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist

from hardbatch.distributed import comm_device
from hardbatch.errors import ConfigError
from hardbatch.graph.knn import KnnResult, knn_exact
from hardbatch.graph.similarity import RowSubset
from hardbatch.mining.plan import BatchPlan

if TYPE_CHECKING:
    from hardbatch.mining.gcbs import GCBSResult

__all__ = ["mine_b3_distributed", "mine_gcbs_distributed"]

_STOP, _SEARCH, _GRAPH = 0, 1, 2


def _shard(num_rows: int, rank: int, world: int) -> tuple[int, int]:
    return rank * num_rows // world, (rank + 1) * num_rows // world


def _local_search(
    query: Any, positive: Any, ids: np.ndarray | None, k: int, rank: int, world: int, options: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    if ids is None:
        q_part, p_part = query, positive
    elif options.get("key_block_size") is not None:  # a source group, read block by block
        q_part, p_part = RowSubset(np.asarray(query), ids), RowSubset(np.asarray(positive), ids)
    else:
        q_part, p_part = np.asarray(query)[ids], np.asarray(positive)[ids]
    lo, hi = _shard(len(q_part), rank, world)
    if hi == lo:
        return np.empty((0, k), np.int32), np.empty((0, k), np.float32), {}
    result = knn_exact(q_part[lo:hi], p_part, k, exclude_self=True, row_offset=lo, **options)
    return result.indices, result.scores, result.info


def _gather(
    indices: np.ndarray, scores: np.ndarray, num_rows: int, k: int, info: dict[str, Any] | None = None
) -> KnnResult | None:
    """Concatenate every rank's (rows, k) shard on rank 0, in rank order; ``info``: rank 0's search info."""
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = comm_device()
    longest = max(hi - lo for lo, hi in (_shard(num_rows, r, world) for r in range(world)))
    ids = torch.zeros(longest, k, dtype=torch.int64, device=dev)
    ids[: len(indices)] = torch.as_tensor(indices, dtype=torch.int64, device=dev)
    values = torch.zeros(longest, k, dtype=torch.float32, device=dev)
    values[: len(scores)] = torch.as_tensor(scores, device=dev)
    id_list = [torch.empty_like(ids) for _ in range(world)] if rank == 0 else None
    value_list = [torch.empty_like(values) for _ in range(world)] if rank == 0 else None
    dist.gather(ids, id_list, dst=0)
    dist.gather(values, value_list, dst=0)
    if rank != 0:
        return None
    parts_i, parts_s = [], []
    for r in range(world):
        lo, hi = _shard(num_rows, r, world)
        parts_i.append(id_list[r][: hi - lo].cpu().numpy().astype(np.int32))
        parts_s.append(value_list[r][: hi - lo].cpu().numpy())
    return KnnResult(
        indices=np.concatenate(parts_i),
        scores=np.concatenate(parts_s),
        info={**(info or {}), "world_size": world},
    )


def _serve(query: Any, positive: Any, options: dict[str, Any]) -> None:
    """Ranks > 0: answer rank 0's search requests until it sends the stop message."""
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = comm_device()
    while True:
        header = torch.zeros(3, dtype=torch.int64, device=dev)
        dist.broadcast(header, src=0)
        command, k, count = (int(v) for v in header.tolist())
        if command == _STOP:
            return
        ids = None
        if count >= 0:
            buffer = torch.empty(count, dtype=torch.int64, device=dev)
            dist.broadcast(buffer, src=0)
            ids = buffer.cpu().numpy()
        num_rows = len(query) if ids is None else len(ids)
        indices, scores, _ = _local_search(query, positive, ids, k, rank, world, options)
        _gather(indices, scores, num_rows, k)


def mine_b3_distributed(
    query_emb: np.ndarray | torch.Tensor,
    positive_emb: np.ndarray | torch.Tensor,
    *,
    knn: str = "exact",
    device: str | torch.device | None = "auto",
    chunk_size: int | None = None,
    precision: str = "auto",
    key_block_size: int | None = None,
    **mine_options: Any,
) -> BatchPlan | None:
    """:func:`~hardbatch.mining.b3.mine_b3` with the teacher ranking split over the ranks of the default group.

    Call it on every rank with the same inputs (e.g. the same memory-mapped ``.npy`` files) after
    ``torch.distributed.init_process_group``; a single process (no group initialised) mines alone.

    Args:
        query_emb: (N, d) float teacher query embeddings (numpy, memory-mapped numpy or torch).
        positive_emb: (N, d) float teacher positive embeddings, aligned with the queries.
        knn: only "exact" is distributed.
        device: device of each rank's search (e.g. "cuda:<local rank>" under NCCL).
        chunk_size: rows per similarity block.
        precision: matmul precision of the search (answer is the fp32 one).
        key_block_size: positives each rank holds at a time (None: all of them). Every rank reads the
            positives block by block from ``positive_emb`` (the same memory-mapped file on a shared
            filesystem), so no rank holds all of them; the ranking is unchanged.
        **mine_options: every other :func:`~hardbatch.mining.b3.mine_b3` argument (batch_size, skip...).

    Returns:
        The plan on rank 0 (``params["world_size"]`` set), None on the other ranks.

    Raises:
        ConfigError: an approximate ``knn`` backend.
    """
    from hardbatch.mining.b3 import mine_b3

    if knn != "exact":
        raise ConfigError(f"distributed mining supports knn='exact' only, got {knn!r}")
    options = {"device": device, "chunk_size": chunk_size, "precision": precision, "normalize": True,
               "key_block_size": key_block_size}  # fmt: skip
    options["normalize"] = bool(mine_options.get("normalize", True))
    options["show_progress"] = mine_options.get("show_progress")
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        plan = mine_b3(query_emb, positive_emb, knn=knn, device=device, chunk_size=chunk_size,
                       precision=precision, key_block_size=key_block_size, **mine_options)  # fmt: skip
        plan.params["world_size"] = 1
        return plan
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank != 0:
        _serve(query_emb, positive_emb, options)
        return None
    dev = comm_device()
    num_examples = len(query_emb)

    def search(q_part: Any, p_part: Any, k: int, ids: np.ndarray) -> KnnResult:
        whole = len(ids) == num_examples
        header = torch.tensor([_SEARCH, k, -1 if whole else len(ids)], dtype=torch.int64, device=dev)
        dist.broadcast(header, src=0)
        if not whole:
            dist.broadcast(torch.as_tensor(np.asarray(ids, dtype=np.int64), device=dev), src=0)
        indices, scores, info = _local_search(q_part, p_part, None, k, 0, world, options)
        gathered = _gather(indices, scores, len(q_part), k, info)
        assert gathered is not None
        return gathered

    try:
        plan = mine_b3(query_emb, positive_emb, knn=knn, device=device, chunk_size=chunk_size,
                       precision=precision, key_block_size=key_block_size, neighbor_search=search,
                       **mine_options)  # fmt: skip
    finally:
        dist.broadcast(torch.tensor([_STOP, 0, 0], dtype=torch.int64, device=dev), src=0)
    plan.params["world_size"] = world
    return plan


def _local_graph(
    rows: Any, keys: Any, threshold: float, row_offset: int, num_rows: int, options: dict[str, Any]
) -> sp.csr_array | None:
    """This rank's (rows, N) slice of the GCBS threshold graph; None when it alone breaks the density cap."""
    from hardbatch.graph.threshold import threshold_graph

    if len(rows) == 0:
        return sp.csr_array((0, len(keys)), dtype=np.int8)
    # The single-process cap is "total edges <= int(max_avg_degree · N)". A slice over that total (slack of
    # one edge against rounding) means the total is too, so stopping early here never changes the answer;
    # rank 0 checks the exact total after the gather.
    local_degree = (options["max_avg_degree"] * num_rows + 1) / len(rows)
    try:
        return threshold_graph(
            rows, keys, threshold, chunk_size=options["chunk_size"], device=options["device"],
            normalize=False, drop_diagonal=True, row_offset=row_offset, max_avg_degree=local_degree,
            show_progress=options["show_progress"] if dist.get_rank() == 0 else False,
        )  # fmt: skip
    except ConfigError:
        return None


def _gather_graph(
    local: sp.csr_array | None, num_rows: int, threshold: float, max_avg_degree: float
) -> sp.csr_array | None:
    """Every rank's graph slice, concatenated in rank order on rank 0 (None on the other ranks).

    The edge counts travel first (``all_gather``: every rank needs the longest for the padded
    ``dist.gather`` of (row, column) pairs); a count of -1 says that slice alone is too dense.

    Raises:
        ConfigError (rank 0): more than ``max_avg_degree · N`` edges in all.
    """
    from hardbatch.graph.threshold import _check_density

    rank, world = dist.get_rank(), dist.get_world_size()
    dev = comm_device()
    count = torch.tensor([-1 if local is None else local.nnz], dtype=torch.int64, device=dev)
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
    if local is not None and local.nnz:
        local_rows = np.repeat(np.arange(local.shape[0], dtype=np.int64), np.diff(local.indptr))
        coo = np.stack([local_rows, local.indices.astype(np.int64)], axis=1)
        pairs[: local.nnz] = torch.as_tensor(coo, device=dev)
    gathered = [torch.empty_like(pairs) for _ in range(world)] if rank == 0 else None
    if longest:
        dist.gather(pairs, gathered, dst=0)
    if rank != 0:
        return None
    row_parts, col_parts = [], []
    for r in range(world):
        lo, _ = _shard(num_rows, r, world)
        part = gathered[r][: counts[r]].cpu().numpy() if longest else np.empty((0, 2), np.int64)
        row_parts.append(part[:, 0] + lo)
        col_parts.append(part[:, 1].astype(np.int32))
    row_idx, col_idx = np.concatenate(row_parts), np.concatenate(col_parts)
    # Each slice is row-major with sorted columns, and the slices come in row order: CSR without a sort,
    # exactly threshold_graph's layout.
    indptr = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(row_idx, minlength=num_rows), out=indptr[1:])
    data = np.ones(len(col_idx), dtype=np.int8)
    return sp.csr_array((data, col_idx, indptr), shape=(num_rows, num_rows))


def _serve_graph(query: Any, positive: Any, options: dict[str, Any]) -> None:
    """Ranks > 0: build this rank's slice of the GCBS graph when rank 0 sends the threshold, until stop."""
    from hardbatch.device import resolve_device
    from hardbatch.graph.threshold import normalize_rows

    rank, world = dist.get_rank(), dist.get_world_size()
    dev = comm_device()
    num_rows = len(query)
    lo, hi = _shard(num_rows, rank, world)
    # Normalised while rank 0 estimates the threshold; row-wise, so the slice equals rank 0's rows lo:hi.
    search_device = resolve_device(options["device"])
    rows = normalize_rows(query[lo:hi], search_device)
    keys = normalize_rows(positive, search_device)
    while True:
        header = torch.zeros(2, dtype=torch.float64, device=dev)
        dist.broadcast(header, src=0)
        command, threshold = int(header[0].item()), float(header[1].item())
        if command == _STOP:
            return
        local = _local_graph(rows, keys, threshold, lo, num_rows, options)
        _gather_graph(local, num_rows, threshold, options["max_avg_degree"])


def mine_gcbs_distributed(
    query_emb: np.ndarray | torch.Tensor,
    positive_emb: np.ndarray | torch.Tensor,
    batch_size: int,
    *,
    graph_method: str = "exact",
    device: str | torch.device | None = "auto",
    chunk_size: int = 2048,
    max_avg_degree: float = 1024.0,
    show_progress: bool | None = None,
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
    (O(nnz) for balanced slices) and the O(N + nnz) graph.

    Args:
        query_emb: (N, d) float query embeddings (numpy, memory-mapped numpy or torch).
        positive_emb: (N, d) float positive embeddings, row i the positive of query i.
        batch_size: examples per batch.
        graph_method: only "exact" is distributed.
        device: device of each rank's similarity pass (e.g. "cuda:<local rank>" under NCCL).
        chunk_size: rows per similarity block.
        max_avg_degree: refuse graphs denser than this, as one process does.
        show_progress: rank 0's progress bar.
        **gcbs_options: every other :func:`~hardbatch.mining.gcbs.mine_gcbs` argument (quantile, seed...).

    Returns:
        The :class:`~hardbatch.mining.gcbs.GCBSResult` on rank 0 (``params["world_size"]`` set, so its
        plan records it), None on the other ranks.

    Raises:
        ConfigError: ``graph_method="ivf"``, or anything :func:`~hardbatch.mining.gcbs.mine_gcbs` raises
            (on rank 0; the other ranks then return None).
    """
    from hardbatch.mining.gcbs import mine_gcbs

    if graph_method != "exact":
        raise ConfigError(f"distributed GCBS supports graph_method='exact' only, got {graph_method!r}")
    common = dict(
        device=device, chunk_size=chunk_size, max_avg_degree=max_avg_degree, show_progress=show_progress
    )
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        result = mine_gcbs(query_emb, positive_emb, batch_size, **common, **gcbs_options)
        result.params["world_size"] = 1
        return result
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank != 0:
        _serve_graph(query_emb, positive_emb, common)
        return None
    dev = comm_device()

    def search(x: torch.Tensor, y: torch.Tensor, threshold: float) -> sp.csr_array:
        dist.broadcast(torch.tensor([_GRAPH, threshold], dtype=torch.float64, device=dev), src=0)
        lo, hi = _shard(len(x), 0, world)
        local = _local_graph(x[lo:hi], y, threshold, lo, len(x), common)
        graph = _gather_graph(local, len(x), threshold, max_avg_degree)
        assert graph is not None
        return graph

    try:
        result = mine_gcbs(query_emb, positive_emb, batch_size, graph_search=search, **common, **gcbs_options)
    finally:
        dist.broadcast(torch.tensor([_STOP, 0.0], dtype=torch.float64, device=dev), src=0)
    result.params["world_size"] = world
    return result
