"""Balanced graph partitioning into clusters of exactly K members (METIS + a graph-aware repair).

B3 groups examples into clusters of size K with METIS (min edge-cut, balanced) and fills every batch with
|B|/K clusters. METIS only balances *approximately* (parts of K±a few, and some parts may be empty on large
graphs), so :func:`repair_parts` moves members until every cluster has exactly K:

1. In every oversized part, the members with the fewest edges inside their part are evicted into a pool.
2. Pool members join undersized parts, each preferring the undersized part it has most edges to; the best
   connected (member, part) pairs are placed first, in vectorised rounds.
3. What is still unplaced fills the remaining slots in a seeded random order; the last ``N mod K`` pool
   members form the *remainder* (label -1), which the batch builder treats as one short cluster.

No example is ever duplicated or dropped (unlike the official B3 code, which pads short clusters with
duplicated rows): the output is a permutation of ``range(N)`` split into ``N // K`` clusters plus the
remainder.

METIS is called in **recursive bisection** (``METIS_PartGraphRecursive``) by default, not in its k-way mode
(one ``part_graph`` call with default options, which the official B3 code makes; ``community="metis-kway"``).
With parts of K = 32, METIS's k-way mode coarsens the graph only down to ~30 vertices per part, i.e. barely
at all (nparts = N/32), and loses its multilevel advantage; recursive bisection coarsens anew for every cut.
Measured on B3 mutual graphs (skip 30, window 100, K = 32; ``benchmarks/results/community_zen3_dec04.md``),
after the same exact-K repair: edges inside a cluster 0.474 → 0.667 and cluster teacher similarity 0.283 →
0.373 at 100k (``clustered`` data), 0.107 → 0.212 and 0.461 → 0.482 at 100k (``lowdim``), 0.112 → 0.226
and 0.420 → 0.455 at 1M (``lowdim``), at 4–5× less METIS time; the same direction at 20k.

Complexity with N nodes and E stored (directed) adjacency entries: METIS is roughly O(E log(N/K)) time
(recursive bisection: O(E) per level) and O(N + E) memory (measured with the repair: 1–3 s for 100k nodes,
32 s for 1M with 13.6M edges, on 2 cores); the repair is O(N log N + E) per round and
runs a handful of rounds (each round places at least one member in every reachable undersized part; it
stops after ``max_rounds`` and falls back to step 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from hardbatch.errors import ConfigError, require

#: Community detection choices of :func:`balanced_clusters`: METIS by recursive bisection (the default),
#: METIS in one k-way call (the official B3 code), Leiden, Louvain.
COMMUNITY_METHODS = ("metis", "metis-kway", "leiden", "louvain")

#: How :func:`metis_parts` runs METIS: recursive bisection or one k-way call.
METIS_MODES = ("recursive", "kway")

__all__ = [
    "COMMUNITY_METHODS",
    "METIS_MODES",
    "ClusterPartition",
    "balanced_clusters",
    "community_labels",
    "community_parts",
    "cut_edges",
    "metis_mode",
    "metis_parts",
    "repair_parts",
]


@dataclass
class ClusterPartition:
    """Exactly-K clusters of a graph's nodes.

    Attributes:
        clusters: (N // K, K) int64 node ids; row c is cluster c.
        remainder: (N mod K,) int64 node ids that belong to no full cluster.
        stats: METIS cut, cut after repair, part-size range before repair, nodes moved, seconds.
    """

    clusters: np.ndarray
    remainder: np.ndarray
    stats: dict[str, float] = field(default_factory=dict)

    def labels(self, num_nodes: int | None = None) -> np.ndarray:
        """(N,) int64 cluster id of every node, -1 for the remainder."""
        n = self.clusters.size + self.remainder.size if num_nodes is None else num_nodes
        labels = np.full(n, -1, dtype=np.int64)
        labels[self.clusters.reshape(-1)] = np.repeat(np.arange(len(self.clusters)), self.clusters.shape[1])
        return labels


def _edge_endpoints(graph: sp.sparray | sp.spmatrix) -> tuple[np.ndarray, np.ndarray]:
    csr = sp.csr_array(graph)
    rows = np.repeat(np.arange(csr.shape[0], dtype=np.int64), np.diff(csr.indptr))
    return rows, csr.indices.astype(np.int64, copy=False)


def cut_edges(graph: sp.sparray | sp.spmatrix, labels: np.ndarray) -> int:
    """Undirected edges whose endpoints carry different labels (label -1 counts as its own group).

    Args:
        graph: (N, N) symmetric adjacency storing each undirected edge twice.
        labels: (N,) int part/cluster label of each node.

    Example:
        >>> import numpy as np, scipy.sparse as sp
        >>> g = sp.csr_array(np.array([[0, 1, 1], [1, 0, 0], [1, 0, 0]]))
        >>> cut_edges(g, np.array([0, 0, 1]))
        1
    """
    rows, cols = _edge_endpoints(graph)
    return int((labels[rows] != labels[cols]).sum() // 2)


def metis_mode(community: str) -> str:
    """The METIS mode (:data:`METIS_MODES`) a community method runs, recorded in plans.

    Leiden and Louvain cut their communities larger than K with METIS by recursive bisection.

    Example:
        >>> metis_mode("metis"), metis_mode("metis-kway"), metis_mode("leiden")
        ('recursive', 'kway', 'recursive')
    """
    if community not in COMMUNITY_METHODS:
        raise ConfigError(
            f"unknown community method {community!r}; expected one of {', '.join(COMMUNITY_METHODS)}"
        )
    return "kway" if community == "metis-kway" else "recursive"


def metis_parts(
    graph: sp.sparray | sp.spmatrix, nparts: int, *, seed: int = 0, mode: str = "recursive"
) -> tuple[np.ndarray, int]:
    """METIS partition of an undirected graph (pymetis, ``CSRAdjacency``, zero-copy).

    Args:
        graph: (N, N) symmetric adjacency storing both directions of each edge, no self-loops. A graph
            without edges is fine (METIS then balances sizes only).
        nparts: number of parts (1 <= nparts <= N).
        seed: METIS random seed (the result is deterministic for a given seed and graph).
        mode: ``"recursive"`` (recursive bisection, much better cuts for parts of a few dozen nodes: see the
            module docstring) or ``"kway"`` (one k-way call, METIS's and pymetis's default for > 8 parts).

    Returns:
        ((N,) int64 part of each node, number of cut edges reported by METIS).

    Example:
        >>> import numpy as np, scipy.sparse as sp
        >>> parts, cut = metis_parts(sp.csr_array((8, 8), dtype=np.int8), 2)
        >>> np.bincount(parts).tolist()
        [4, 4]
    """
    import pymetis

    if mode not in METIS_MODES:
        raise ConfigError(f"METIS mode must be one of {', '.join(METIS_MODES)}, got {mode!r}")
    num_nodes = graph.shape[0]
    if not 1 <= nparts <= max(num_nodes, 1):
        raise ConfigError(f"cannot split {num_nodes} nodes into {nparts} parts")
    if nparts == 1:
        return np.zeros(num_nodes, dtype=np.int64), 0
    csr = sp.csr_array(graph)
    idx = pymetis.zero_copy_dtype()
    adjacency = pymetis.CSRAdjacency(
        np.ascontiguousarray(csr.indptr, dtype=idx), np.ascontiguousarray(csr.indices, dtype=idx)
    )
    options = pymetis.Options(seed=int(seed))
    cut, parts = pymetis.part_graph(
        int(nparts), adjacency=adjacency, recursive=mode == "recursive", options=options
    )
    return np.asarray(parts, dtype=np.int64), int(cut)


def _within_degree(rows: np.ndarray, cols: np.ndarray, labels: np.ndarray, num_nodes: int) -> np.ndarray:
    same = (labels[rows] == labels[cols]) & (labels[rows] >= 0)
    return np.bincount(rows[same], minlength=num_nodes)


def _evict_excess(labels: np.ndarray, within: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Ids evicted from oversized parts: per part, its (count - size) members with the fewest inside edges."""
    assigned = np.flatnonzero(labels >= 0)
    part = labels[assigned]
    counts = np.bincount(part)
    excess = np.maximum(counts - size, 0)
    if not excess.any():
        return np.zeros(0, dtype=np.int64)
    # Sort by part, then fewest within-part edges, then a random tiebreak; evict the first `excess`.
    order = np.lexsort((rng.random(assigned.size), within[assigned], part))
    sorted_part = part[order]
    first = np.searchsorted(sorted_part, sorted_part, side="left")
    rank_in_part = np.arange(order.size) - first
    return assigned[order[rank_in_part < excess[sorted_part]]]


def _place_by_edges(
    pool: np.ndarray,
    labels: np.ndarray,
    deficit: np.ndarray,
    csr: sp.csr_array,
    rng: np.random.Generator,
    max_rounds: int,
) -> np.ndarray:
    """Place pool members into undersized parts they have edges to; returns the still-unplaced members."""
    num_parts = deficit.size
    for _ in range(max_rounds):
        if pool.size == 0 or not deficit.any():
            break
        sub = csr[pool]
        member = np.repeat(np.arange(pool.size, dtype=np.int64), np.diff(sub.indptr))
        part = labels[sub.indices]
        usable = part >= 0
        usable[usable] = deficit[part[usable]] > 0
        if not usable.any():
            break
        keys, counts = np.unique(member[usable] * num_parts + part[usable], return_counts=True)
        pair_member, pair_part = keys // num_parts, keys % num_parts
        # Each member's best part: most edges, random tiebreak.
        order = np.lexsort((rng.random(keys.size), -counts, pair_member))
        best = order[np.r_[True, pair_member[order][1:] != pair_member[order][:-1]]]
        cand_member, cand_part, cand_count = pair_member[best], pair_part[best], counts[best]
        # Each part accepts up to its deficit, best-connected candidates first.
        order = np.lexsort((rng.random(best.size), -cand_count, cand_part))
        sorted_part = cand_part[order]
        rank = np.arange(order.size) - np.searchsorted(sorted_part, sorted_part, side="left")
        accepted = order[rank < deficit[sorted_part]]
        labels[pool[cand_member[accepted]]] = cand_part[accepted]
        deficit -= np.bincount(cand_part[accepted], minlength=num_parts)
        placed = np.zeros(pool.size, dtype=bool)
        placed[cand_member[accepted]] = True
        pool = pool[~placed]
    return pool


def repair_parts(
    parts: np.ndarray,
    graph: sp.sparray | sp.spmatrix | None,
    cluster_size: int,
    *,
    seed: int = 0,
    max_rounds: int = 32,
) -> tuple[np.ndarray, int]:
    """Turn an approximately balanced partition into ``N // K`` parts of exactly ``K`` plus a remainder.

    Args:
        parts: (N,) int part label of each node. Labels outside ``[0, N // K)`` (e.g. -1) mean
            "unassigned"; parts may be empty or oversized.
        graph: (N, N) symmetric adjacency used to decide who moves where (``None``: no edges).
        cluster_size: K.
        seed: tiebreak RNG seed.
        max_rounds: rounds of graph-guided placement before the random fill.

    Returns:
        ((N,) int64 labels in ``[0, N // K)`` with each label used exactly K times, and -1 on exactly
        ``N mod K`` remainder nodes; number of nodes whose label changed).

    Example:
        >>> import numpy as np
        >>> labels, moved = repair_parts(np.array([0, 0, 0, 0, 0, 1, 1]), None, 3)
        >>> np.bincount(labels[labels >= 0]).tolist(), int((labels == -1).sum())
        ([3, 3], 1)
    """
    if cluster_size < 1:
        raise ConfigError(f"cluster_size must be >= 1, got {cluster_size}")
    parts = np.asarray(parts, dtype=np.int64)
    num_nodes = parts.size
    num_parts = num_nodes // cluster_size
    rng = np.random.default_rng([int(seed), 0x5EED])
    labels = np.where((parts >= 0) & (parts < num_parts), parts, -1)
    if graph is None:
        graph = sp.csr_array((num_nodes, num_nodes), dtype=np.int8)
    csr = sp.csr_array(graph)
    if csr.shape != (num_nodes, num_nodes):
        raise ConfigError(f"graph has shape {csr.shape} but there are {num_nodes} part labels")
    rows, cols = _edge_endpoints(csr)
    within = _within_degree(rows, cols, labels, num_nodes)
    labels[_evict_excess(labels, within, cluster_size, rng)] = -1
    deficit = cluster_size - np.bincount(labels[labels >= 0], minlength=num_parts)
    pool = np.flatnonzero(labels < 0)
    pool = _place_by_edges(pool, labels, deficit, csr, rng, max_rounds)
    # Fill the remaining slots at random; the N mod K members left over are the remainder.
    slots = np.repeat(np.arange(num_parts), deficit)
    pool = pool[rng.permutation(pool.size)]
    labels[pool[: slots.size]] = slots
    labels[pool[slots.size :]] = -1
    moved = int((labels != parts).sum())
    return labels, moved


def community_labels(graph: sp.sparray | sp.spmatrix, method: str, *, seed: int = 0) -> np.ndarray:
    """Communities of an undirected graph, of whatever sizes the method finds (not balanced).

    Args:
        graph: (N, N) symmetric adjacency storing both directions of each edge.
        method: ``"leiden"`` (igraph's Leiden, modularity objective; Traag et al. 2019) or ``"louvain"``
            (networkit's parallel Louvain, PLM with refinement; Staudt & Meyerhenke 2016). Both come with
            the ``graph`` extra.
        seed: RNG seed of the method (networkit's PLM is multi-threaded; its result can still vary
            slightly between runs with several threads).

    Returns:
        (N,) int64 community label of every node (isolated nodes get singleton communities).

    Raises:
        MissingExtraError: the ``graph`` extra is not installed.

    Complexity: Leiden and Louvain are about O(E) per pass (a few passes), memory O(N + E).

    Example:
        >>> import numpy as np, scipy.sparse as sp
        >>> two = sp.block_diag([np.ones((3, 3)) - np.eye(3)] * 2, format="csr")
        >>> labels = community_labels(two, "leiden")
        >>> len(set(labels[:3].tolist())), bool(labels[0] != labels[3])
        (1, True)
    """
    csr = sp.csr_array(graph)
    num_nodes = csr.shape[0]
    upper = sp.triu(csr, k=1).tocoo()
    edges = np.stack([upper.row, upper.col], axis=1).astype(np.int64)
    if method == "leiden":
        import random

        igraph = require("igraph", "graph", "Leiden community detection")
        igraph.set_random_number_generator(random.Random(int(seed)))
        try:
            g = igraph.Graph(n=num_nodes, edges=edges.tolist(), directed=False)
            clustering = g.community_leiden(objective_function="modularity", n_iterations=-1)
            labels = np.asarray(clustering.membership, dtype=np.int64)
        finally:
            igraph.set_random_number_generator(random)
        return labels
    if method == "louvain":
        nk = require("networkit", "graph", "Louvain (PLM) community detection")
        nk.engineering.setSeed(int(seed), False)
        g = nk.Graph(num_nodes, weighted=False, directed=False)
        if edges.size:
            g.addEdges((edges[:, 0].astype(np.uint64), edges[:, 1].astype(np.uint64)))
        algorithm = nk.community.PLM(g, refine=True)
        algorithm.run()
        return np.asarray(algorithm.getPartition().getVector(), dtype=np.int64)
    raise ConfigError(f"unknown community method {method!r}; expected one of {', '.join(COMMUNITY_METHODS)}")


def community_parts(
    graph: sp.sparray | sp.spmatrix, cluster_size: int, method: str, *, seed: int = 0
) -> np.ndarray:
    """Part labels for the exact-K repair from communities of any size.

    Communities larger than K are cut by METIS into about size / K parts (so a big community is split
    along its own weakest edges); the nodes are then laid out community by community (largest first,
    sub-parts kept together) and cut into consecutive chunks of K: chunk c is part c, the trailing
    ``N mod K`` nodes are unassigned (-1). Small communities thus share a chunk with the next one.

    Args:
        graph: (N, N) symmetric adjacency.
        cluster_size: K.
        method: ``"leiden"`` or ``"louvain"`` (see :func:`community_labels`).
        seed: seed of the community detection and of METIS.

    Returns:
        (N,) int64 part labels in ``[0, N // K)`` (each exactly K times) or -1.

    Example:
        >>> import numpy as np, scipy.sparse as sp
        >>> parts = community_parts(sp.csr_array((10, 10), dtype=np.int8), 4, "leiden")
        >>> np.bincount(parts[parts >= 0]).tolist(), int((parts < 0).sum())
        ([4, 4], 2)
    """
    csr = sp.csr_array(graph)
    num_nodes = csr.shape[0]
    labels = community_labels(csr, method, seed=seed)
    names, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    sub_part = np.zeros(num_nodes, dtype=np.int64)
    for community in np.flatnonzero(sizes > cluster_size):
        members = np.flatnonzero(inverse == community)
        nparts = int(sizes[community] // cluster_size)
        if nparts > 1:
            sub_part[members] = metis_parts(csr[members][:, members], nparts, seed=seed, mode="recursive")[0]
    rank = np.empty(names.size, dtype=np.int64)
    rank[np.lexsort((np.arange(names.size), -sizes))] = np.arange(names.size)
    order = np.lexsort((np.arange(num_nodes), sub_part, rank[inverse]))
    parts = np.full(num_nodes, -1, dtype=np.int64)
    usable = num_nodes - num_nodes % cluster_size
    parts[order[:usable]] = np.arange(usable) // cluster_size
    return parts


def balanced_clusters(
    graph: sp.sparray | sp.spmatrix, cluster_size: int, *, seed: int = 0, community: str = "metis"
) -> ClusterPartition:
    """METIS (or Leiden / Louvain) into ``N // K`` parts, repaired to exactly K members each.

    Args:
        graph: (N, N) symmetric unweighted adjacency (both directions stored, no self-loops).
        cluster_size: K.
        seed: METIS / community detection and repair seed.
        community: ``"metis"`` (balanced min-cut, the paper's choice, by recursive bisection),
            ``"metis-kway"`` (one k-way METIS call, as the official B3 code), ``"leiden"`` or ``"louvain"``
            (modularity communities of free sizes, packed by :func:`community_parts`); every method is
            followed by the same exact-K repair (:func:`repair_parts`), so the output contract is the same.

    Returns:
        :class:`ClusterPartition` with clusters sorted by their smallest member, members sorted within a
        cluster; ``stats`` holds ``metis_cut``, ``cut`` (after repair), ``metis_min_part``,
        ``metis_max_part``, ``metis_empty_parts``, ``moved`` and ``within_edge_fraction``.

    Example:
        >>> import numpy as np, scipy.sparse as sp
        >>> result = balanced_clusters(sp.csr_array((10, 10), dtype=np.int8), 4)
        >>> result.clusters.shape, result.remainder.size
        ((2, 4), 2)
    """
    num_nodes = graph.shape[0]
    num_parts = num_nodes // cluster_size
    if num_parts == 0:
        return ClusterPartition(
            clusters=np.zeros((0, cluster_size), dtype=np.int64),
            remainder=np.arange(num_nodes, dtype=np.int64),
            stats={"metis_cut": 0, "cut": 0, "moved": num_nodes, "within_edge_fraction": 0.0},
        )
    mode = metis_mode(community)  # also rejects unknown methods
    if community in ("metis", "metis-kway"):
        parts, metis_cut = metis_parts(graph, num_parts, seed=seed, mode=mode)
    else:
        parts = community_parts(graph, cluster_size, community, seed=seed)
        metis_cut = cut_edges(graph, parts)
    sizes = np.bincount(parts[parts >= 0], minlength=num_parts)
    labels, moved = repair_parts(parts, graph, cluster_size, seed=seed)
    member_order = np.lexsort((np.arange(num_nodes), labels))
    in_cluster = member_order[labels[member_order] >= 0]
    clusters = in_cluster.reshape(num_parts, cluster_size)
    clusters = clusters[np.argsort(clusters[:, 0], kind="stable")]
    total_edges = int(sp.csr_array(graph).nnz // 2)
    cut = cut_edges(graph, labels)
    stats = {
        "metis_cut": metis_cut,
        "cut": cut,
        "metis_min_part": int(sizes.min()),
        "metis_max_part": int(sizes.max()),
        "metis_empty_parts": int((sizes == 0).sum()),
        "moved": moved,
        "within_edge_fraction": (1.0 - cut / total_edges) if total_edges else 0.0,
    }
    return ClusterPartition(
        clusters=clusters.astype(np.int64),
        remainder=np.sort(np.flatnonzero(labels < 0)).astype(np.int64),
        stats=stats,
    )
