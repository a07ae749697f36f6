"""Benchmark: community detection for B3 clusters, side by side: METIS (the paper) vs Leiden vs Louvain.

Two parts, in one run, every method followed by the same exact-K repair
(:func:`hardbatch.graph.partition.balanced_clusters`):

* **graph** (``--graph-sizes``, default 100k): a synthetic rank-window-like graph, N nodes in planted
  topics of 200, each node with ``degree`` random mutual edges, 80 % inside its topic. Reported: seconds,
  within-cluster edge fraction (higher = fewer strong-negative pairs split across batches), and topic
  purity of the clusters (share of a cluster's members in its majority topic).
* **mining** (``--mine-sizes``, default 20k): full ``mine_b3`` on clustered synthetic embeddings (d = 64,
  p = 30, m = 100, K = 32) per method: partition seconds, within-cluster edge fraction and batch hardness
  (mean teacher similarity of in-batch pairs, vs random batches).

Complexity: METIS ≈ O(E), Leiden / Louvain ≈ O(E) per pass; the repair O(N log N + E) per round.
Usage: python benchmarks/bench_community.py [--graph-sizes 100000,1000000] [--mine-sizes 20000]
Writes benchmarks/results/community.json and community.md.
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


def graph_rows(sizes: list[int]) -> list[dict]:
    rows = []
    for n in sizes:
        graph, topics = synthetic_graph(n)
        for method in COMMUNITY_METHODS:
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


def mining_rows(sizes: list[int]) -> list[dict]:
    from hardbatch.mining import mine_b3

    rows = []
    for n in sizes:
        rng = np.random.default_rng(1)
        centers = rng.normal(size=(n // 50, 64))
        topic = rng.integers(0, len(centers), n)
        query = (centers[topic] + 1.2 * rng.normal(size=(n, 64))).astype(np.float32)
        positive = (centers[topic] + 1.2 * rng.normal(size=(n, 64))).astype(np.float32)
        for method in COMMUNITY_METHODS:
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


def machine() -> dict:
    info = describe_machine(packages=("pymetis", "igraph", "networkit"))
    return {**info, "cores": info["cpus"], "load_average": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--graph-sizes", default="100000")
    parser.add_argument("--mine-sizes", default="20000")
    args = parser.parse_args()
    sizes = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731
    env = machine()
    rows = graph_rows(sizes(args.graph_sizes)) + mining_rows(sizes(args.mine_sizes))
    env["load_average_end"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "community.json").write_text(json.dumps({"machine": env, "rows": rows}, indent=2))
    lines = [
        "# Community detection for B3: METIS vs Leiden vs Louvain (each + exact-K repair)",
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
    (RESULTS / "community.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
