"""Benchmark: community detection for B3 clusters, side by side: METIS (the paper) vs Leiden vs Louvain.

Three parts, in one run, every method followed by the same exact-K repair
(:func:`hardbatch.graph.partition.balanced_clusters`):

* **graph** (``--graph-sizes``, default 100k): a synthetic rank-window-like graph, N nodes in planted
  topics of 200, each node with ``degree`` random mutual edges, 80 % inside its topic. Reported: seconds,
  within-cluster edge fraction (higher = fewer strong-negative pairs split across batches), and topic
  purity of the clusters (share of a cluster's members in its majority topic).
* **mining** (``--mine-sizes``, default 20k): full ``mine_b3`` on clustered synthetic embeddings (d = 64,
  p = 30, m = 100, K = 32) per method: partition seconds, within-cluster edge fraction and batch hardness
  (mean teacher similarity of in-batch pairs, vs random batches).
* **b3** (``--b3-graphs kind:N,...``, default none): the mutual graph of ``mine_b3`` (p = 30, m = 100) on
  ``benchmarks/bench_b3.py``'s data kinds (``clustered``, ``lowdim``; d = 384), built once per graph (exact
  kNN up to 200k, above it ``ivf_torch`` at nprobe 32, which keeps the graph's kind at a fraction of the
  time), then every method on it: seconds, within-cluster edge fraction, cluster teacher similarity.

Complexity: METIS ≈ O(E), Leiden / Louvain ≈ O(E) per pass; the repair O(N log N + E) per round.
Usage: python benchmarks/bench_community.py [--graph-sizes 100000,1000000] [--mine-sizes 20000]
[--b3-graphs clustered:100000,lowdim:1000000] [--tag machine]
Writes benchmarks/results/community[_tag].json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from hardbatch.graph.partition import COMMUNITY_METHODS, balanced_clusters
from hardbatch.machine import describe_machine

RESULTS = Path(__file__).parent / "results"
K = 32


def synthetic_graph(n: int, degree: int = 20, topic: int = 200, inside: float = 0.8, seed: int = 0):
    rng = np.random.default_rng(seed)
    topics = rng.permutation(np.arange(n) // topic)
    by_topic = np.argsort(topics, kind="stable")
    start = np.searchsorted(topics[by_topic], topics)
    size = np.bincount(topics)[topics]
    rows = np.repeat(np.arange(n), degree // 2)
    same = rng.random(rows.size) < inside
    cols = np.where(
        same,
        by_topic[start[rows] + rng.integers(0, size[rows])],
        rng.integers(0, n, rows.size),
    )
    keep = rows != cols
    graph = sp.csr_array((np.ones(keep.sum(), dtype=np.int8), (rows[keep], cols[keep])), shape=(n, n))
    graph = sp.csr_array(((graph + graph.T) > 0).astype(np.int8))
    graph.sort_indices()
    return graph, topics


def purity(clusters: np.ndarray, topics: np.ndarray) -> float:
    labels = topics[clusters]
    return float(np.mean([np.bincount(row).max() / row.size for row in labels]))


def graph_rows(sizes: list[int], methods: list[str]) -> list[dict]:
    rows = []
    for n in sizes:
        graph, topics = synthetic_graph(n)
        for method in methods:
            started = time.perf_counter()
            part = balanced_clusters(graph, K, seed=0, community=method)
            seconds = time.perf_counter() - started
            rows.append({
                "part": "graph", "n": n, "edges": int(graph.nnz // 2), "method": method,
                "seconds": round(seconds, 2), "within_edge_fraction": round(part.stats["within_edge_fraction"], 4),
                "topic_purity": round(purity(part.clusters, topics), 4),
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


def mining_rows(sizes: list[int], methods: list[str]) -> list[dict]:
    from hardbatch.mining import mine_b3

    rows = []
    for n in sizes:
        rng = np.random.default_rng(1)
        centers = rng.normal(size=(n // 50, 64))
        topic = rng.integers(0, len(centers), n)
        query = (centers[topic] + 1.2 * rng.normal(size=(n, 64))).astype(np.float32)
        positive = (centers[topic] + 1.2 * rng.normal(size=(n, 64))).astype(np.float32)
        for method in methods:
            plan = mine_b3(query, positive, batch_size=64, cluster_size=K, skip=30, window=100, device="cpu",
                           community=method, show_progress=False)  # fmt: skip
            stats = plan.stats
            rows.append({
                "part": "mining", "n": n, "method": method,
                "partition_seconds": round(stats["stages"]["partition"]["seconds"], 2),
                "within_edge_fraction": round(stats["partition"]["within_edge_fraction"], 4),
                "cluster_mean_sim": round(stats["hardness"]["cluster_mean_sim"], 4),
                "random_mean_sim": round(stats["hardness"]["random_mean_sim"], 4),
                "topic_purity": round(purity(plan.clusters, topic), 4),
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


def b3_graph(kind: str, n: int):
    """(mutual graph, query, positive) of ``mine_b3``'s graph stage on ``bench_b3``'s data of this kind."""
    from bench_b3 import SKIP, WINDOW, clustered, low_dimensional  # benchmarks/ is the script's folder
    from hardbatch.graph.knn import knn
    from hardbatch.graph.rank_window import mutual_graph, rank_window, window_matrix

    query, positive = (clustered if kind == "clustered" else low_dimensional)(n)
    options = {} if n <= 200_000 else {"backend": "ivf_torch", "nprobe": 32, "recall_target": None}
    found = knn(
        query, positive, SKIP + WINDOW, exclude_self=True, normalize=True, show_progress=False, **options
    )
    window = np.asarray(rank_window(found.indices, SKIP, WINDOW), dtype=np.int64)
    return mutual_graph(window_matrix(window, n)), query, positive


def b3_rows(specs: list[str], methods: list[str]) -> list[dict]:
    from hardbatch.mining.b3 import cluster_hardness

    rows = []
    for spec in specs:
        kind, n = spec.split(":")
        graph, query, positive = b3_graph(kind, int(n))
        for method in methods:
            started = time.perf_counter()
            part = balanced_clusters(graph, K, seed=0, community=method)
            seconds = time.perf_counter() - started
            rows.append({
                "part": "b3", "data": kind, "n": int(n), "edges": int(graph.nnz // 2), "method": method,
                "seconds": round(seconds, 2), "within_edge_fraction": round(part.stats["within_edge_fraction"], 4),
                "moved": int(part.stats["moved"]),
                "cluster_mean_sim": round(cluster_hardness(query, positive, part.clusters), 4),
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


def machine() -> dict:
    info = describe_machine(packages=("pymetis", "igraph", "networkit"))
    return {**info, "cores": info["cpus"], "load_average": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--graph-sizes", default="100000")
    parser.add_argument("--mine-sizes", default="20000")
    parser.add_argument("--b3-graphs", default="", help="kind:N,... (kinds: clustered, lowdim)")
    parser.add_argument("--tag", default="", help="suffix of the result files (machine kind)")
    parser.add_argument("--methods", default=",".join(COMMUNITY_METHODS), help="comma-separated")
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    sizes = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731
    env = machine()
    rows = (
        graph_rows(sizes(args.graph_sizes), methods)
        + mining_rows(sizes(args.mine_sizes), methods)
        + b3_rows([x for x in args.b3_graphs.split(",") if x], methods)
    )
    env["load_average_end"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    name = f"community_{args.tag}" if args.tag else "community"
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": env, "rows": rows}, indent=2))
    lines = [
        "# Community detection for B3: METIS (recursive bisection, one k-way call) vs Leiden vs Louvain "
        "(each + exact-K repair)",
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores, load average {env['load_average'][0]:.1f} at start, "
        f"{env['load_average_end'][0]:.1f} at end (shared machine: compare within a row group only).",
        "",
        "| graph N | edges | method | seconds | within-cluster edges | topic purity |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for r in (r for r in rows if r["part"] == "graph"):
        lines.append(f"| {r['n']:,} | {r['edges']:,} | {r['method']} | {r['seconds']} | "
                     f"{r['within_edge_fraction']:.3f} | {r['topic_purity']:.3f} |")  # fmt: skip
    lines += ["", "| mine_b3 N | method | partition s | within-cluster edges | batch sim (B3 / random) | topic purity |",
              "|---:|---|---:|---:|---|---:|"]  # fmt: skip
    for r in (r for r in rows if r["part"] == "mining"):
        lines.append(f"| {r['n']:,} | {r['method']} | {r['partition_seconds']} | {r['within_edge_fraction']:.3f} | "
                     f"{r['cluster_mean_sim']:.3f} / {r['random_mean_sim']:.3f} | {r['topic_purity']:.3f} |")  # fmt: skip
    lines += ["", "| B3 graph | N | edges | method | seconds | within-cluster edges | moved by repair | "
              "cluster teacher sim |", "|---|---:|---:|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in (r for r in rows if r["part"] == "b3"):
        lines.append(f"| {r['data']} | {r['n']:,} | {r['edges']:,} | {r['method']} | {r['seconds']} | "
                     f"{r['within_edge_fraction']:.3f} | {r['moved']:,} | {r['cluster_mean_sim']:.3f} |")  # fmt: skip
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
