"""Hierarchical B3 for 10M+ pairs: coarse shards that fit one METIS run, then B3 inside each shard.

Flat B3 needs the whole N-node rank-window graph in one METIS call (measured ~200 s and O(N·m) memory at 1M)
and an N × N ranking. Here the examples are first cut into shards of about ``shard_size``:

1. **Coarse partition** (per source when ``sources`` is given): spherical k-means (faiss) with
   C = ceil(n / shard_size) centroids on the mean of the normalised query and positive embeddings; the
   centroids are chained greedily (each next centroid is the nearest unused one), examples are ordered by
   (centroid position in the chain, similarity to their centroid, descending) and the order is cut into
   consecutive shards whose sizes are multiples of K (all but the last shard of a source). Neighbouring
   shards therefore hold neighbouring topics, and each shard is topically tight.
2. **B3 inside each shard**: :func:`~hardbatch.mining.b3.mine_b3` (exact or IVF kNN, METIS, exact-K repair)
   on the shard only, so the ranking costs O(n · shard_size · d) instead of O(n² · d) and METIS never sees
   more than ``shard_size`` nodes. Shards are independent: they can be spread over ranks or machines.
3. The shard plans are merged: every example is in exactly one cluster of exactly K or in the remainder
   (< K per source), as in a flat plan.

What it costs: pairs that are each other's hard negatives but fall into different shards cannot share a
cluster. ``benchmarks/bench_b3.py --hierarchical`` measures it against flat B3 (within-cluster edge fraction
of the *flat* graph, batch hardness).

Time O(n · C · d) for k-means assignment + Σ_shards O(s² · d) for the rankings (s = shard size), i.e.
O(n · s · d) in all; memory O(n · d) for the (memory-mapped) embeddings, O(s · d + s · m) per shard, O(n)
for the merged plan.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from hardbatch.errors import ConfigError, require
from hardbatch.mining.plan import BatchPlan, input_hashes

__all__ = ["coarse_shards", "mine_b3_hierarchical"]


def _unit(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    return array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)


def _chain(centroids: np.ndarray) -> np.ndarray:
    """Greedy nearest-neighbour order of the centroids, starting from centroid 0 (O(C² · d))."""
    sims = centroids @ centroids.T
    order, used = [0], np.zeros(len(centroids), dtype=bool)
    used[0] = True
    for _ in range(len(centroids) - 1):
        row = np.where(used, -np.inf, sims[order[-1]])
        nxt = int(np.argmax(row))
        order.append(nxt)
        used[nxt] = True
    return np.asarray(order)


def _sum_stages(shards: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    total: dict[str, dict[str, float]] = {}
    for shard in shards:
        for name, values in shard["stages"].items():
            entry = total.setdefault(name, {"seconds": 0.0, "peak_rss_mb": 0.0})
            entry["seconds"] = round(entry["seconds"] + values["seconds"], 3)
            entry["peak_rss_mb"] = max(entry["peak_rss_mb"], values["peak_rss_mb"])
    return total


def _sum_counts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Integer counts summed over shards (edges, isolated nodes, cuts); ratios are recomputed by the caller."""
    total: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, int | np.integer) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + int(value)
    return total


def coarse_shards(
    query_emb: np.ndarray | torch.Tensor,
    positive_emb: np.ndarray | torch.Tensor,
    ids: np.ndarray,
    *,
    shard_size: int,
    cluster_size: int,
    seed: int = 0,
    chunk: int = 65536,
) -> list[np.ndarray]:
    """Cut the examples ``ids`` into topical shards of at most ``shard_size`` (multiples of K but the last).

    Args:
        query_emb: (N, d) float teacher query embeddings.
        positive_emb: (N, d) float teacher positive embeddings.
        ids: (n,) int64 example ids to shard.
        shard_size: largest shard; rounded down to a multiple of ``cluster_size``.
        cluster_size: K.
        seed: k-means seed.
        chunk: rows per assignment block (memory O(chunk · d)).

    Returns:
        Shards (int64 id arrays) whose concatenation is a permutation of ``ids``.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(1000, 8)).astype(np.float32)
        >>> shards = coarse_shards(x, x, np.arange(1000), shard_size=300, cluster_size=10)
        >>> [len(s) for s in shards], np.array_equal(np.sort(np.concatenate(shards)), np.arange(1000))
        ([250, 250, 250, 250], True)
    """
    ids = np.asarray(ids, dtype=np.int64)
    size = (int(shard_size) // cluster_size) * cluster_size
    if size < cluster_size:
        raise ConfigError(f"shard_size={shard_size} must be at least cluster_size={cluster_size}")
    n = len(ids)
    if n <= size:
        return [ids]
    num_shards = math.ceil(n / size)
    # Equal shards (in multiples of K) rather than full ones plus a small last one.
    per_shard = math.ceil(n / num_shards / cluster_size) * cluster_size
    faiss = require("faiss", "faiss", "hierarchical mining (k-means)")
    dim = np.asarray(query_emb[:1]).shape[1]
    rng = np.random.default_rng([int(seed), 0x5A4D])
    train = np.sort(rng.choice(n, size=min(n, 256 * num_shards), replace=False))
    mean = _unit(_unit(np.asarray(query_emb[ids[train]])) + _unit(np.asarray(positive_emb[ids[train]])))
    kmeans = faiss.Kmeans(
        dim, num_shards, niter=20, seed=int(seed), spherical=True, min_points_per_centroid=1
    )
    kmeans.train(mean)
    centroids = _unit(kmeans.centroids)
    position = np.empty(num_shards, dtype=np.int64)
    position[_chain(centroids)] = np.arange(num_shards)
    assign = np.empty(n, dtype=np.int64)
    affinity = np.empty(n, dtype=np.float32)
    for lo in range(0, n, chunk):
        part = ids[lo : lo + chunk]
        x = _unit(_unit(np.asarray(query_emb[part])) + _unit(np.asarray(positive_emb[part])))
        sims = x @ centroids.T
        best = sims.argmax(axis=1)
        assign[lo : lo + len(part)] = position[best]
        affinity[lo : lo + len(part)] = sims[np.arange(len(part)), best]
    order = np.lexsort((ids, -affinity, assign))
    ordered = ids[order]
    return [ordered[lo : lo + per_shard] for lo in range(0, n, per_shard)]


def mine_b3_hierarchical(
    query_emb: np.ndarray | torch.Tensor,
    positive_emb: np.ndarray | torch.Tensor,
    *,
    batch_size: int,
    cluster_size: int = 32,
    shard_size: int = 200_000,
    sources: Sequence[Any] | np.ndarray | None = None,
    seed: int = 0,
    dataset_hash: str | None = None,
    show_progress: bool | None = None,
    **mine_options: Any,
) -> BatchPlan:
    """B3 plan of coarse shards mined independently (see the module docstring).

    Args:
        query_emb: (N, d) float teacher query embeddings (memory-mapped numpy is read shard by shard).
        positive_emb: (N, d) float teacher positive embeddings.
        batch_size: |B| of the plan (a multiple of K).
        cluster_size: K.
        shard_size: largest shard mined in one piece (METIS and ranking size).
        sources: (N,) source per example; shards never cross sources.
        seed: k-means, METIS and shuffle seed.
        dataset_hash: stored in the plan.
        show_progress: progress bars of the shard runs.
        **mine_options: other :func:`~hardbatch.mining.b3.mine_b3` arguments (skip, window, knn...).

    Returns:
        A :class:`BatchPlan` over all N examples (``params["hierarchical"]`` records the shards), without the
        neighbour graph (each shard's graph is dropped after its partition).

    Raises:
        ConfigError: bad sizes, or options that only make sense for a flat plan.
    """
    from hardbatch.mining.b3 import mine_b3

    for option in ("store_window", "store_neighbors", "same_source"):
        mine_options.pop(option, None)
    texts = mine_options.pop("positive_texts", None)  # sliced per shard below
    num_examples = len(query_emb)
    if batch_size % cluster_size or batch_size > num_examples:
        raise ConfigError(f"batch_size={batch_size} must be a multiple of K={cluster_size} and <= N")
    started = time.perf_counter()
    hashes = input_hashes(query_emb, positive_emb, dataset_hash)
    if sources is None:
        codes, names = np.zeros(num_examples, dtype=np.int32), None
    else:
        values = np.asarray([str(s) for s in sources], dtype=object)
        uniq, codes = np.unique(values, return_inverse=True)
        codes, names = codes.astype(np.int32), [str(u) for u in uniq]
    clusters, remainder, cluster_codes, remainder_codes = [], [], [], []
    shard_stats: list[dict[str, Any]] = []
    for code in range(int(codes.max()) + 1 if num_examples else 0):
        group = np.flatnonzero(codes == code)
        shards = coarse_shards(
            query_emb, positive_emb, group, shard_size=shard_size, cluster_size=cluster_size, seed=seed
        )
        for shard in shards:
            if len(shard) < 2 * cluster_size or len(shard) <= mine_options.get("skip", 30) + 1:
                remainder.append(shard)  # too small to mine: like a flat plan's per-source remainder
                remainder_codes.append(np.full(len(shard), code, dtype=np.int32))
                continue
            sub_q, sub_p = np.asarray(query_emb[shard]), np.asarray(positive_emb[shard])
            shard_texts = None if texts is None else [texts[int(i)] for i in shard]
            plan = mine_b3(sub_q, sub_p, batch_size=cluster_size, cluster_size=cluster_size, seed=seed,
                           store_window=False, store_neighbors=False, show_progress=show_progress,
                           positive_texts=shard_texts, **mine_options)  # fmt: skip
            clusters.append(shard[plan.clusters])
            remainder.append(shard[plan.remainder])
            cluster_codes.append(np.full(len(plan.clusters), code, dtype=np.int32))
            remainder_codes.append(np.full(len(plan.remainder), code, dtype=np.int32))
            shard_stats.append({
                "size": len(shard), "seconds": plan.stats["total_seconds"],
                "stages": plan.stats["stages"], "graph": plan.stats["graph"],
                "partition": plan.stats["partition"],
            })  # fmt: skip
    all_clusters = np.concatenate(clusters) if clusters else np.empty((0, cluster_size), np.int64)
    params = {
        "method": "b3",
        "batch_size": int(batch_size),
        "cluster_size": int(cluster_size),
        "seed": int(seed),
        "same_source": sources is not None,
        "per_source": sources is not None,
        "hierarchical": {"shard_size": int(shard_size), "shards": len(shard_stats)},
        "filter_same_text": texts is not None,
        **{key: value for key, value in mine_options.items() if isinstance(value, int | float | str | bool)},
    }
    from hardbatch.mining.b3 import cluster_hardness
    from hardbatch.progress import peak_rss_mb

    random_groups = np.random.default_rng(seed).permutation(num_examples)[: all_clusters.size]
    stats = {
        "total_seconds": round(time.perf_counter() - started, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "stages": _sum_stages(shard_stats),
        "graph": _sum_counts([s["graph"] for s in shard_stats]),
        "partition": _sum_counts([s["partition"] for s in shard_stats]),
        "hardness": {
            "cluster_mean_sim": cluster_hardness(query_emb, positive_emb, all_clusters),
            "random_mean_sim": cluster_hardness(
                query_emb, positive_emb, random_groups.reshape(-1, cluster_size)
            ),
        },
        "shards": [{"size": s["size"], "seconds": s["seconds"]} for s in shard_stats],
        "num_clusters": len(all_clusters),
        "remainder": int(sum(len(r) for r in remainder)),
    }
    edges = stats["graph"].get("mutual_edges", 0)
    # Within the shards' own graphs (edges between shards are never built in this mode).
    stats["partition"]["within_edge_fraction"] = (
        1.0 - stats["partition"].get("cut", 0) / edges if edges else 0.0
    )
    return BatchPlan(
        clusters=all_clusters,
        remainder=np.concatenate(remainder) if remainder else np.empty(0, np.int64),
        num_examples=num_examples,
        params=params,
        hashes=hashes,
        stats=stats,
        cluster_sources=np.concatenate(cluster_codes) if names is not None and cluster_codes else None,
        remainder_sources=np.concatenate(remainder_codes) if names is not None and remainder_codes else None,
        source_names=names,
    )
