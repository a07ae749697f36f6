"""B3 mining over many processes with torch.distributed: each rank ranks its shard of the queries.

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
Only ``knn="exact"`` is distributed (an approximate index would be built on every rank).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from hardbatch.errors import ConfigError
from hardbatch.graph.knn import KnnResult, knn_exact
from hardbatch.mining.plan import BatchPlan

__all__ = ["mine_b3_distributed"]

_STOP, _SEARCH = 0, 1


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _shard(num_rows: int, rank: int, world: int) -> tuple[int, int]:
    return rank * num_rows // world, (rank + 1) * num_rows // world


def _local_search(
    query: Any, positive: Any, ids: np.ndarray | None, k: int, rank: int, world: int, options: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    q_part = query if ids is None else np.asarray(query)[ids]
    p_part = positive if ids is None else np.asarray(positive)[ids]
    lo, hi = _shard(len(q_part), rank, world)
    if hi == lo:
        return np.empty((0, k), np.int32), np.empty((0, k), np.float32)
    result = knn_exact(q_part[lo:hi], p_part, k, exclude_self=True, row_offset=lo, **options)
    return result.indices, result.scores


def _gather(indices: np.ndarray, scores: np.ndarray, num_rows: int, k: int) -> KnnResult | None:
    """Concatenate every rank's (rows, k) shard on rank 0, in rank order."""
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = _comm_device()
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
        indices=np.concatenate(parts_i), scores=np.concatenate(parts_s), info={"world_size": world}
    )


def _serve(query: Any, positive: Any, options: dict[str, Any]) -> None:
    """Ranks > 0: answer rank 0's search requests until it sends the stop message."""
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = _comm_device()
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
        indices, scores = _local_search(query, positive, ids, k, rank, world, options)
        _gather(indices, scores, num_rows, k)


def mine_b3_distributed(
    query_emb: np.ndarray | torch.Tensor,
    positive_emb: np.ndarray | torch.Tensor,
    *,
    knn: str = "exact",
    device: str | torch.device | None = "auto",
    chunk_size: int | None = None,
    precision: str = "auto",
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
        **mine_options: every other :func:`~hardbatch.mining.b3.mine_b3` argument (batch_size, skip...).

    Returns:
        The plan on rank 0 (``params["world_size"]`` set), None on the other ranks.

    Raises:
        ConfigError: an approximate ``knn`` backend.
    """
    from hardbatch.mining.b3 import mine_b3

    if knn != "exact":
        raise ConfigError(f"distributed mining supports knn='exact' only, got {knn!r}")
    options = {"device": device, "chunk_size": chunk_size, "precision": precision, "normalize": True}
    options["normalize"] = bool(mine_options.get("normalize", True))
    options["show_progress"] = mine_options.get("show_progress")
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        plan = mine_b3(query_emb, positive_emb, knn=knn, device=device, chunk_size=chunk_size,
                       precision=precision, **mine_options)  # fmt: skip
        plan.params["world_size"] = 1
        return plan
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank != 0:
        _serve(query_emb, positive_emb, options)
        return None
    dev = _comm_device()
    num_examples = len(query_emb)

    def search(q_part: Any, p_part: Any, k: int, ids: np.ndarray) -> KnnResult:
        whole = len(ids) == num_examples
        header = torch.tensor([_SEARCH, k, -1 if whole else len(ids)], dtype=torch.int64, device=dev)
        dist.broadcast(header, src=0)
        if not whole:
            dist.broadcast(torch.as_tensor(np.asarray(ids, dtype=np.int64), device=dev), src=0)
        indices, scores = _local_search(q_part, p_part, None, k, 0, world, options)
        gathered = _gather(indices, scores, len(q_part), k)
        assert gathered is not None
        return gathered

    try:
        plan = mine_b3(query_emb, positive_emb, knn=knn, device=device, chunk_size=chunk_size,
                       precision=precision, neighbor_search=search, **mine_options)  # fmt: skip
    finally:
        dist.broadcast(torch.tensor([_STOP, 0, 0], dtype=torch.int64, device=dev), src=0)
    plan.params["world_size"] = world
    return plan
