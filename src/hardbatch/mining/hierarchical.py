"""Hierarchical B3 for 10M+ pairs: coarse shards that fit one METIS run, then B3 inside each shard.

Flat B3 needs the whole N-node rank-window graph in one METIS call (measured ~200 s and O(N·m) memory at 1M)
and an N × N ranking. Here the examples are first cut into shards of about ``shard_size``:

1. **Coarse partition** (per source when ``sources`` is given): spherical k-means (faiss) with
   C = max(16 · shards, min(n / 400, 4096)) centroids (:data:`CENTROIDS_PER_SHARD`,
   :data:`EXAMPLES_PER_CENTROID`) on the mean of the normalised query and positive embeddings; the
   centroids are chained greedily (each next centroid is the nearest unused one), examples are ordered by
   (centroid position in the chain, similarity to their centroid, descending) and the order is cut into
   consecutive shards whose sizes are multiples of K (all but the last shard of a source). A shard is thus a run of ≥ 16 neighbouring fine clusters: a shard boundary cuts
   through one fine cluster at most, where one centroid per shard cut through every coarse one (100k
   synthetic pairs in 17 shards: batch hardness 0.197 against 0.059 with one centroid per shard, flat B3
   0.293; 1M: 0.241 against 0.031; see docs/b3.md).
2. **B3 inside each shard**: :func:`~hardbatch.mining.b3.mine_b3` (exact or IVF kNN, METIS, exact-K repair)
   on the shard only, so the ranking costs O(n · shard_size · d) instead of O(n² · d) and METIS never sees
   more than ``shard_size`` nodes, with the shard's source's ``skip``, ``window`` and classification
   setting and its slice of ``positive_texts``. Shards are independent.
3. The shard plans are merged in shard order: every example is in exactly one cluster of exactly K or in
   the remainder (< K per source), as in a flat plan.

The three steps are the methods of :class:`HierarchicalRun`; :func:`mine_b3_hierarchical` runs them in one
process, :func:`hardbatch.mining.distributed.mine_b3_hierarchical_distributed` runs step 1 on rank 0, step 2
for each rank's share of the shards and step 3 on rank 0 (the same code, so the same plan).

What it costs: pairs that are each other's hard negatives but fall into different shards cannot share a
cluster. Every plan measures it on a sample (:func:`coarse_window_recall`, ``stats["coarse_window_recall"]``):
the fraction of a flat plan's exact rank window that the example's shard window keeps, the hierarchical
counterpart of an approximate kNN's window recall. ``benchmarks/bench_hierarchical.py`` also measures it
against flat B3 (within-cluster edge fraction of the *flat* graph, batch hardness).

Time O(n · C · d) for the k-means assignment (+ O(64 · C² · d · 10) to train it on a sample of 64 · C)
+ Σ_shards O(s² · d) for the rankings (s = shard size), i.e. O(n · s · d) in all (÷ W over W ranks);
memory: the embeddings are read in blocks (k-means assignment, hashes, hardness) and one shard's rows at a
time (a memory-mapped ``.npy`` is never loaded whole), O(s · d + s · m) per shard (its kNN's score and key
blocks bounded by ``key_block_size`` / ``memory_budget`` as in :func:`~hardbatch.mining.b3.mine_b3`), O(n)
for the shard ids and the merged plan.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hardbatch.errors import ConfigError, require
from hardbatch.mining.plan import BatchPlan, input_hashes

__all__ = [
    "CENTROIDS_PER_SHARD",
    "COARSE_RECALL_SAMPLE",
    "EXAMPLES_PER_CENTROID",
    "HierarchicalRun",
    "Shard",
    "ShardResult",
    "coarse_shards",
    "coarse_window_recall",
    "mine_b3_hierarchical",
]

#: k-means centroids per shard of the coarse partition. Measured on 100k synthetic pairs cut into 17 shards
#: (``benchmarks/results/hierarchical_100000_shards6250.md``; batch hardness, flat B3 0.293; per-shard rule
#: alone): 1 per shard 0.059, 4: 0.111, 16: 0.197 in 15.9 s, 64: 0.209 in 28.4 s.
CENTROIDS_PER_SHARD = 16
#: ... and at least one centroid per this many examples (up to :data:`MAX_CENTROIDS`), so a fine cluster
#: stays about 3× the reach of B3's rank window (p + m = 130) however many examples share a shard. 1M
#: synthetic pairs in 17 shards (``b3_large_1000000_hierarchical.md``): 272 centroids (16 per shard) gave
#: batch hardness 0.096 (357 s in all), 2,500 gave 0.241 (428 s, 4.9 GB peak).
EXAMPLES_PER_CENTROID = 400
#: Cap of the fine centroids: k-means training costs O(64 · C² · d) per iteration (10 iterations on a
#: sample of 64 · C), the assignment O(n · C · d).
MAX_CENTROIDS = 4096
_TRAIN_PER_CENTROID = 64


#: Examples whose flat rank window :func:`coarse_window_recall` compares with their shard's (time
#: O(sample · N · d): 256 rows cost about a 256/N fraction of a flat exact ranking).
COARSE_RECALL_SAMPLE = 256


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


def _shard_length(n: int, size: int, cluster_size: int) -> int:
    """Examples in every shard but the last when n examples are cut into shards of at most ``size`` (a
    multiple of K): equal shards in multiples of K rather than full ones plus a small last one."""
    if n <= size:
        return n
    return math.ceil(n / math.ceil(n / size) / cluster_size) * cluster_size


def coarse_shards(
    query_emb: np.ndarray | torch.Tensor,
    positive_emb: np.ndarray | torch.Tensor,
    ids: np.ndarray,
    *,
    shard_size: int,
    cluster_size: int,
    seed: int = 0,
    chunk: int = 65536,
    centroids_per_shard: int = CENTROIDS_PER_SHARD,
    examples_per_centroid: int = EXAMPLES_PER_CENTROID,
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
        centroids_per_shard: k-means centroids per shard (at most one per 8 examples); the chained
            centroids are cut into runs, so more centroids move the shard boundaries off topics.
        examples_per_centroid: at least one centroid per this many examples, up to
            :data:`MAX_CENTROIDS` (0: per shard only).

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
    # Checked before the one-shard shortcut, so a bad setting fails on small data too, not first at scale.
    if int(centroids_per_shard) < 1:
        raise ConfigError(f"centroids_per_shard must be >= 1, got {centroids_per_shard}")
    if int(examples_per_centroid) < 0:
        raise ConfigError(f"examples_per_centroid must be >= 0, got {examples_per_centroid}")
    n = len(ids)
    if n <= size:
        return [ids]
    num_shards = math.ceil(n / size)
    per_shard = _shard_length(n, size, cluster_size)
    by_size = min(n // int(examples_per_centroid), MAX_CENTROIDS) if examples_per_centroid else 0
    wanted = max(int(centroids_per_shard) * num_shards, by_size)
    num_centroids = max(num_shards, min(wanted, n // 8))
    faiss = require("faiss", "faiss", "hierarchical mining (k-means)")
    dim = np.asarray(query_emb[:1]).shape[1]
    rng = np.random.default_rng([int(seed), 0x5A4D])
    # 64 points per centroid and 10 iterations: at C = 2,500 (1M examples) faiss's 256 and 20 made the cut
    # ~10 min of a 16 min run (hardness 0.266); these took 428 s in all (0.241).
    train = np.sort(rng.choice(n, size=min(n, _TRAIN_PER_CENTROID * num_centroids), replace=False))
    mean = _unit(_unit(np.asarray(query_emb[ids[train]])) + _unit(np.asarray(positive_emb[ids[train]])))
    kmeans = faiss.Kmeans(
        dim,
        num_centroids,
        niter=10,
        seed=int(seed),
        spherical=True,
        min_points_per_centroid=1,
        max_points_per_centroid=_TRAIN_PER_CENTROID,
    )
    kmeans.train(mean)
    centroids = _unit(kmeans.centroids)
    position = np.empty(num_centroids, dtype=np.int64)
    position[_chain(centroids)] = np.arange(num_centroids)
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


@dataclass(frozen=True)
class Shard:
    """One coarse shard: the example ids of one source group that are mined together.

    Attributes:
        code: the source's code (index into the plan's ``source_names``; 0 without sources).
        ids: (s,) int64 example ids.
    """

    code: int
    ids: np.ndarray


@dataclass(frozen=True)
class ShardResult:
    """One shard's B3 result in positions of :attr:`Shard.ids` (int32: what travels to rank 0 is 4 B/example).

    Attributes:
        clusters: (c, K) int32 positions, one cluster per row.
        remainder: (r,) int32 positions in no cluster.
        stats: the shard plan's timings, graph and partition counts; None for a shard too small to mine.
        rank: the rank that mined it (0 in one process).
    """

    clusters: np.ndarray
    remainder: np.ndarray
    stats: dict[str, Any] | None
    rank: int = 0


def _exact_windows(
    query: np.ndarray,
    positive: np.ndarray,
    key_ids: np.ndarray,
    rows: np.ndarray,
    span: tuple[int, int],
    *,
    normalize: bool,
    device: Any,
    key_block: int,
) -> np.ndarray:
    """Example ids at ranks ``[start, start + width)`` of each row's exact ranking of the positives ``key_ids``.

    A row's own positive is left out of its ranking, as :func:`~hardbatch.mining.b3.mine_b3` does; ``rows``
    are example ids that all lie in ``key_ids``. Returns (len(rows), width) int64, -1 where the ranking is
    shorter. The positives are read ``key_block`` rows at a time: O(len(rows) · len(key_ids) · d) time,
    O(key_block · (d + len(rows))) memory.
    """
    from hardbatch.graph.knn import knn_exact
    from hardbatch.graph.similarity import RowSubset

    start, width = span
    out = np.full((len(rows), width), -1, dtype=np.int64)
    k = min(start + width, len(key_ids) - 1)
    if k <= start or not len(rows):
        return out
    result = knn_exact(query[rows], RowSubset(positive, key_ids), k + 1, key_block_size=min(key_block, len(key_ids)),
                       normalize=normalize, device=device, show_progress=False)  # fmt: skip
    ranked = key_ids[result.indices.astype(np.int64)]
    # The k + 1 best hold the row's own positive at most once: drop it, or else the (k + 1)-th.
    own_last = np.argsort(ranked == rows[:, None], axis=1, kind="stable")[:, :k]
    ranked = np.take_along_axis(ranked, own_last, axis=1)
    out[:, : k - start] = ranked[:, start:k]
    return out


def coarse_window_recall(
    query_emb: np.ndarray | torch.Tensor,
    positive_emb: np.ndarray | torch.Tensor,
    shards: Sequence[Shard],
    codes: np.ndarray,
    spans: Sequence[tuple[int, int]],
    *,
    minable: Sequence[bool],
    sample: int = 256,
    seed: int = 0,
    normalize: bool = True,
    device: Any = "auto",
    key_block: int = 65536,
) -> dict[str, float | int]:
    """How much of the flat plan's rank windows the coarse shards keep, measured on a sample of examples.

    For each sampled example, the exact window of a flat plan (ranks ``[start, start + width)`` of its
    source's positives, its own left out) is compared with the exact window inside its shard (the same
    ranks of the shard's positives): ``window_recall`` is the mean of |shard window ∩ flat window| / |flat
    window|, the hierarchical counterpart of :func:`~hardbatch.graph.knn.knn_recall`'s window recall (with
    exact kNN inside the shards; an approximate ``knn`` inside loses more); ``shard_coverage`` the mean
    fraction of the flat window that lies in the example's shard at all (a pair in two shards can never
    share a cluster). An example of a shard too small to mine keeps no window (recall 0).

    Args:
        query_emb: (N, d) float teacher query embeddings (memory-mapped numpy is read in blocks).
        positive_emb: (N, d) float teacher positive embeddings.
        shards: the coarse shards (:meth:`HierarchicalRun.shards`), each of one source.
        codes: (N,) int source code of every example.
        spans: per source code, the window ``(start, width)`` over the other examples
            (:func:`~hardbatch.mining.b3.effective_window`).
        minable: per shard, whether it is mined (else all of it is remainder).
        sample: examples checked (fewer when there are fewer; sources of class labels are left out).
        seed: which examples.
        normalize: cosine similarity, as the plan's kNN.
        device: torch device of the exact checks.
        key_block: positives resident at a time.

    Returns:
        ``{"window_recall": r, "shard_coverage": c, "sample": S}``; recall and coverage are 1.0 when
        nothing was sampled. Time O(S · N · d) for the flat windows (every positive read once more) plus
        O(S · s · d) for the shard windows; memory O(key_block · (d + S)).
    """
    from hardbatch.mining.b3 import _as_numpy

    query, positive = _as_numpy(query_emb), _as_numpy(positive_emb)
    candidates = np.concatenate([shard.ids for shard in shards]) if shards else np.empty(0, np.int64)
    ranked = np.array([width > 0 for _, width in spans], dtype=bool)  # sources of class labels: no window
    candidates = candidates[ranked[codes[candidates]]]
    rng = np.random.default_rng([int(seed), 0x5EC])
    chosen = np.sort(rng.choice(candidates, size=min(int(sample), len(candidates)), replace=False))
    if not len(chosen):
        return {"window_recall": 1.0, "shard_coverage": 1.0, "sample": 0}
    options = dict(normalize=normalize, device=device, key_block=key_block)
    flat: dict[int, np.ndarray] = {}
    for code in np.unique(codes[chosen]):
        rows = chosen[codes[chosen] == code]
        group = np.flatnonzero(codes == code)
        for row, window in zip(rows, _exact_windows(query, positive, group, rows, spans[code], **options)):
            flat[int(row)] = window
    recalls, coverages = [], []
    for shard, mined in zip(shards, minable):
        rows = chosen[np.isin(chosen, shard.ids)]
        if not len(rows):
            continue
        inside = (
            _exact_windows(query, positive, shard.ids, rows, spans[shard.code], **options)
            if mined
            else np.full((len(rows), spans[shard.code][1]), -1, dtype=np.int64)
        )
        for row, local in zip(rows, inside):
            window = flat[int(row)]
            window = window[window >= 0]
            if not len(window):
                continue
            recalls.append(np.isin(window, local[local >= 0]).mean())
            coverages.append(np.isin(window, shard.ids).mean())
    return {
        "window_recall": float(np.mean(recalls)) if recalls else 1.0,
        "shard_coverage": float(np.mean(coverages)) if coverages else 1.0,
        "sample": len(recalls),
    }


class HierarchicalRun:
    """The settings of one hierarchical run and its three steps: shards, B3 per shard, merge.

    :func:`mine_b3_hierarchical` runs the steps in one process;
    :func:`hardbatch.mining.distributed.mine_b3_hierarchical_distributed` runs :meth:`shards` on rank 0,
    :meth:`mine` for each rank's share of the shards and :meth:`merge` on rank 0, so both build the plan
    with the same code. Construction only checks and resolves options (O(N) for the source codes).

    Args:
        num_examples: N.
        batch_size, cluster_size, shard_size, skip, window, classification, sources, seed, show_progress,
        dataset_hash: as in :func:`mine_b3_hierarchical`.
        mine_options: the other :func:`~hardbatch.mining.b3.mine_b3` arguments (``positive_texts`` is
            sliced per shard; plan-wide options that make no sense per shard are dropped).
        dim: d of the embeddings, to check a ``memory_budget`` against the largest shard's kNN up front
            (1 when unknown: only budgets too small for any d are found then).

    Raises:
        ConfigError: bad sizes, per-source settings naming unknown sources, bad key-block options
            (:func:`~hardbatch.mining.b3.check_key_blocks`).
    """

    def __init__(
        self,
        num_examples: int,
        *,
        batch_size: int,
        cluster_size: int,
        shard_size: int,
        skip: int | Mapping[str, int],
        window: int | Mapping[str, int],
        classification: bool | Sequence[str],
        sources: Sequence[Any] | np.ndarray | None,
        seed: int,
        show_progress: bool | None,
        dataset_hash: str | None,
        mine_options: dict[str, Any],
        dim: int = 1,
        coarse_recall_sample: int = COARSE_RECALL_SAMPLE,
    ) -> None:
        from hardbatch.mining.b3 import _classification_groups, _source_codes, per_source_setting

        if batch_size % cluster_size or batch_size > num_examples:
            raise ConfigError(f"batch_size={batch_size} must be a multiple of K={cluster_size} and <= N")
        self.num_examples, self.batch_size, self.cluster_size = num_examples, batch_size, cluster_size
        self.shard_size, self.seed, self.show_progress = shard_size, seed, show_progress
        self.dataset_hash = dataset_hash
        options = dict(mine_options)
        for option in ("store_window", "store_neighbors", "same_source"):
            options.pop(option, None)
        self.texts = options.pop("positive_texts", None)  # sliced per shard
        self.options = options
        if sources is None:
            self.codes, self.names = np.zeros(num_examples, dtype=np.int32), None
        else:
            self.codes, self.names = _source_codes(sources, num_examples)
        # Per-source settings resolved here: a shard is mined without sources, so it gets its source's values.
        self.skips = per_source_setting(skip, "skip", self.names, minimum=0)
        self.windows = per_source_setting(window, "window", self.names, minimum=1)
        self.labels = _classification_groups(classification, self.names)
        # As hardbatch.validation.check_positive, with 0 allowed (off); a string must not reach int().
        sample = coarse_recall_sample
        if isinstance(sample, bool) or not isinstance(sample, int | np.integer) or sample < 0:
            raise ConfigError(f"coarse_recall_sample must be an integer >= 0, got {sample!r}")
        self.coarse_recall_sample = int(coarse_recall_sample)
        self._check_key_blocks(dim)

    def _check_key_blocks(self, dim: int) -> None:
        """Key-block options checked once, before any shard is cut or mined, against the largest shard
        that will be mined (its size follows from the source sizes alone: O(N) for the counts)."""
        from hardbatch.mining.b3 import check_key_blocks

        k = self.cluster_size
        size = (int(self.shard_size) // k) * k  # below K: coarse_shards says so
        counts = np.bincount(self.codes, minlength=len(self.skips)) if self.num_examples else []
        lengths = []
        for code, count in enumerate(counts):
            length = _shard_length(int(count), size, k) if size else 0
            # Shards too small to mine and label-level sources (they rank labels) run no kNN.
            if not self.labels[code] and length >= 2 * k and length > self.skips[code] + 1:
                lengths.append(length)
        check_key_blocks(self.options, num_keys=max(lengths) if lengths else None, dim=dim)

    @classmethod
    def of(cls, num_examples: int, options: Mapping[str, Any], dim: int = 1) -> HierarchicalRun:
        """The run of ``mine_b3_hierarchical(query, positive, **options)`` over N = ``num_examples``.

        The options are bound against :func:`mine_b3_hierarchical`'s signature, so its defaults (and its
        error for a missing ``batch_size``) hold here too, written once. ``dim``: d, see the constructor.

        Raises:
            ConfigError: a missing ``batch_size``, or what the constructor raises.
        """
        try:
            bound = inspect.signature(mine_b3_hierarchical).bind(None, None, **options)
        except TypeError as exc:
            raise ConfigError(f"hierarchical mining: {exc}") from None
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        for unused in ("query_emb", "positive_emb"):
            arguments.pop(unused)
        return cls(num_examples, mine_options=arguments.pop("mine_options"), dim=dim, **arguments)

    def shards(self, query_emb: Any, positive_emb: Any) -> list[Shard]:
        """The coarse shards of every source, in source order (:func:`coarse_shards`; reads all rows once)."""
        shards = []
        for code in range(int(self.codes.max()) + 1 if self.num_examples else 0):
            group = np.flatnonzero(self.codes == code)
            cut = coarse_shards(query_emb, positive_emb, group, shard_size=self.shard_size,
                                cluster_size=self.cluster_size, seed=self.seed)  # fmt: skip
            shards += [Shard(code, ids) for ids in cut]
        return shards

    def mine(self, query_emb: Any, positive_emb: Any, shard: Shard) -> ShardResult:
        """B3 on the shard's rows only (a memory-mapped input reads just them): O(s² · d) time, O(s · (d + m))."""
        from hardbatch.distributed import rank
        from hardbatch.mining.b3 import mine_b3

        ids, skip = shard.ids, self.skips[shard.code]
        if not self._minable(shard):
            # Too small to mine: all of it is remainder, as a flat plan's per-source remainder.
            return ShardResult(np.empty((0, self.cluster_size), np.int32), np.arange(len(ids), dtype=np.int32),
                               None, rank())  # fmt: skip
        texts = None if self.texts is None else [self.texts[int(i)] for i in ids]
        plan = mine_b3(np.asarray(query_emb[ids]), np.asarray(positive_emb[ids]), batch_size=self.cluster_size,
                       cluster_size=self.cluster_size, skip=skip, window=self.windows[shard.code],
                       classification=self.labels[shard.code], seed=self.seed, store_window=False,
                       store_neighbors=False, show_progress=self.show_progress, positive_texts=texts,
                       **self.options)  # fmt: skip
        stats = {key: plan.stats[key] for key in ("stages", "graph", "partition")}
        stats["seconds"] = plan.stats["total_seconds"]
        stats.update(_key_block_stats(plan.stats.get("knn_info") or {}))
        return ShardResult(plan.clusters.astype(np.int32), plan.remainder.astype(np.int32), stats, rank())

    def _minable(self, shard: Shard) -> bool:
        """Whether a shard is large enough to mine (else all of it is remainder)."""
        return len(shard.ids) >= 2 * self.cluster_size and len(shard.ids) > self.skips[shard.code] + 1

    def _coarse_recall(self, query_emb: Any, positive_emb: Any, shards: Sequence[Shard]) -> dict[str, Any]:
        from hardbatch.mining.b3 import effective_window

        count_self = bool(self.options.get("count_self", True))
        spans = [
            (0, 0) if label else effective_window(skip, window, count_self)
            for skip, window, label in zip(self.skips, self.windows, self.labels)
        ]
        return coarse_window_recall(
            query_emb, positive_emb, shards, self.codes, spans, minable=[self._minable(s) for s in shards],
            sample=self.coarse_recall_sample, seed=self.seed, normalize=bool(self.options.get("normalize", True)),
            device=self.options.get("device", "auto"), key_block=max(self.cluster_size, int(self.shard_size)),
        )  # fmt: skip

    def merge(
        self,
        query_emb: Any,
        positive_emb: Any,
        shards: Sequence[Shard],
        results: Sequence[ShardResult],
        *,
        started: float,
    ) -> BatchPlan:
        """The plan of all shards, in shard order: every example in one cluster of exactly K or the remainder.

        Reads every row twice more, streamed (input hashes; the hardness statistic of up to 4,096 clusters at
        a time): O(N · d) time, O(N) memory for the plan.
        """
        from hardbatch.progress import peak_rss_mb

        k = self.cluster_size
        clusters = [shard.ids[result.clusters] for shard, result in zip(shards, results)]
        remainder = [shard.ids[result.remainder] for shard, result in zip(shards, results)]
        all_clusters = np.concatenate(clusters).reshape(-1, k) if clusters else np.empty((0, k), np.int64)
        mined = [(shard, result) for shard, result in zip(shards, results) if result.stats is not None]
        stats = {
            "total_seconds": 0.0,  # set last
            "peak_rss_mb": 0.0,
            **_shard_stats(mined),
            "hardness": self._hardness(query_emb, positive_emb, all_clusters),
            **(
                {"coarse_window_recall": self._coarse_recall(query_emb, positive_emb, shards)}
                if self.coarse_recall_sample
                else {}
            ),
            "num_clusters": len(all_clusters),
            "remainder": int(sum(len(r) for r in remainder)),
        }
        per_source = self.names is not None and bool(shards)
        plan = BatchPlan(
            clusters=all_clusters,
            remainder=np.concatenate(remainder) if remainder else np.empty(0, np.int64),
            num_examples=self.num_examples,
            params=self._params(num_shards=len(mined)),
            hashes=input_hashes(query_emb, positive_emb, self.dataset_hash),
            stats=stats,
            cluster_sources=_source_column(shards, clusters) if per_source else None,
            remainder_sources=_source_column(shards, remainder) if per_source else None,
            source_names=self.names,
        )
        stats["total_seconds"] = round(time.perf_counter() - started, 3)
        stats["peak_rss_mb"] = round(peak_rss_mb(), 1)
        return plan

    def _hardness(self, query_emb: Any, positive_emb: Any, clusters: np.ndarray) -> dict[str, float]:
        from hardbatch.mining.b3 import cluster_hardness

        normalize = bool(self.options.get("normalize", True))
        random_groups = np.random.default_rng(self.seed).permutation(self.num_examples)[: clusters.size]
        return {
            "cluster_mean_sim": cluster_hardness(query_emb, positive_emb, clusters, normalize=normalize),
            "random_mean_sim": cluster_hardness(
                query_emb, positive_emb, random_groups.reshape(-1, self.cluster_size), normalize=normalize
            ),
        }

    def _params(self, num_shards: int) -> dict[str, Any]:
        from hardbatch.graph.partition import metis_mode
        from hardbatch.mining.b3 import _setting_param

        simple = {key: v for key, v in self.options.items() if isinstance(v, int | float | str | bool)}
        return {
            "method": "b3",
            "metis_mode": metis_mode(self.options.get("community", "metis")),
            "batch_size": int(self.batch_size),
            "cluster_size": int(self.cluster_size),
            "seed": int(self.seed),
            "same_source": self.names is not None,
            "per_source": self.names is not None,
            "hierarchical": {"shard_size": int(self.shard_size), "shards": num_shards},
            "filter_same_text": self.texts is not None,
            **simple,
            "skip": _setting_param(self.skips, self.names),
            "window": _setting_param(self.windows, self.names),
            "classification": [n for n, lab in zip(self.names or ["*"], self.labels) if lab],
        }


def _source_column(shards: Sequence[Shard], parts: Sequence[np.ndarray]) -> np.ndarray:
    """The source code of every row of the concatenated ``parts`` (one part per shard)."""
    return np.concatenate(
        [np.full(len(part), shard.code, dtype=np.int32) for shard, part in zip(shards, parts)]
    )


def _key_block_stats(stats: Mapping[str, Any]) -> dict[str, Any]:
    """The key block and block count a shard's kNN ran with (none when its positives were all resident)."""
    return {key: stats[key] for key in ("key_block_size", "key_blocks") if key in stats}


def _shard_stats(mined: Sequence[tuple[Shard, ShardResult]]) -> dict[str, Any]:
    """Stages, graph and partition counts summed over the mined shards; seconds per shard and per rank."""
    stats_list = [result.stats for _, result in mined]
    rank_seconds = [0.0] * (max((result.rank for _, result in mined), default=0) + 1)
    for _, result in mined:
        rank_seconds[result.rank] = round(rank_seconds[result.rank] + result.stats["seconds"], 3)
    partition = _sum_counts([s["partition"] for s in stats_list])
    graph = _sum_counts([s["graph"] for s in stats_list])
    edges = graph.get("mutual_edges", 0)
    # Within the shards' own graphs (edges between shards are never built in this mode).
    partition["within_edge_fraction"] = 1.0 - partition.get("cut", 0) / edges if edges else 0.0
    return {
        "stages": _sum_stages(stats_list),
        "graph": graph,
        "partition": partition,
        "shards": [
            {
                "size": len(shard.ids),
                "seconds": result.stats["seconds"],
                "rank": result.rank,
                **_key_block_stats(result.stats),
            }
            for shard, result in mined
        ],
        "rank_seconds": rank_seconds,  # shard mining seconds per rank (their sum is work, not wall time)
    }


def mine_b3_hierarchical(
    query_emb: np.ndarray | torch.Tensor,
    positive_emb: np.ndarray | torch.Tensor,
    *,
    batch_size: int,
    cluster_size: int = 32,
    shard_size: int = 200_000,
    skip: int | Mapping[str, int] = 30,
    window: int | Mapping[str, int] = 100,
    classification: bool | Sequence[str] = False,
    sources: Sequence[Any] | np.ndarray | None = None,
    seed: int = 0,
    dataset_hash: str | None = None,
    show_progress: bool | None = None,
    coarse_recall_sample: int = COARSE_RECALL_SAMPLE,
    **mine_options: Any,
) -> BatchPlan:
    """B3 plan of coarse shards mined independently, in one process (see the module docstring).

    :func:`hardbatch.mining.distributed.mine_b3_hierarchical_distributed` spreads the shards over the ranks
    of a process group and returns the same plan.

    Args:
        query_emb: (N, d) float teacher query embeddings (memory-mapped numpy is read shard by shard).
        positive_emb: (N, d) float teacher positive embeddings.
        batch_size: |B| of the plan (a multiple of K).
        cluster_size: K.
        shard_size: largest shard mined in one piece (METIS and ranking size).
        skip: p, an int or per source (``{"vqa": 70, "*": 30}``); a shard is mined with its source's p.
        window: m, an int or per source.
        classification: sources whose positives are class labels (True: all), as in
            :func:`~hardbatch.mining.b3.mine_b3`.
        sources: (N,) source per example; shards never cross sources.
        seed: k-means, METIS and shuffle seed.
        dataset_hash: stored in the plan.
        show_progress: progress bars of the shard runs.
        coarse_recall_sample: examples whose flat exact rank window is compared with their shard's
            (:func:`coarse_window_recall`, recorded as ``stats["coarse_window_recall"]``); 0: not measured.
        **mine_options: other :func:`~hardbatch.mining.b3.mine_b3` arguments (count_self, knn, margins...),
            the same for every shard. Among them ``key_block_size`` (B, or ``"auto"`` with a budget) and
            ``memory_budget`` (bytes or ``"4GiB"``) bound each shard's exact kNN as in ``mine_b3``: its
            working set is then O(B·d + chunk·B) instead of O(s·d + chunk·s) for a shard of s examples
            (the shard's own rows, 2·s·d floats, are read whole either way) and the plan is the unblocked
            one; a budget is resolved per shard (``stats["shards"]`` records each shard's
            ``key_block_size`` and ``key_blocks``).

    Returns:
        A :class:`BatchPlan` over all N examples (``params["hierarchical"]`` records the shards), without the
        neighbour graph (each shard's graph is dropped after its partition).

    Raises:
        ConfigError: bad sizes, per-source settings that name no source, or bad key-block options: malformed,
            contradictory, with an approximate ``knn``, or a budget too small for the largest shard's
            smallest key block; all found before any shard is cut or mined.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(400, 8)).astype(np.float32)
        >>> plan = mine_b3_hierarchical(x, x, batch_size=20, cluster_size=10, shard_size=200, skip=2,
        ...                             window=10, device="cpu", show_progress=False)
        >>> plan.params["hierarchical"], plan.clusters.shape
        ({'shard_size': 200, 'shards': 2}, (40, 10))
    """
    started = time.perf_counter()
    run = HierarchicalRun(
        len(query_emb), batch_size=batch_size, cluster_size=cluster_size, shard_size=shard_size, skip=skip,
        window=window, classification=classification, sources=sources, seed=seed, show_progress=show_progress,
        dataset_hash=dataset_hash, mine_options=mine_options, dim=int(query_emb.shape[1]),
        coarse_recall_sample=coarse_recall_sample,
    )  # fmt: skip
    shards = run.shards(query_emb, positive_emb)
    results = [run.mine(query_emb, positive_emb, shard) for shard in shards]
    return run.merge(query_emb, positive_emb, shards, results, started=started)
