"""Benchmark: what hierarchical B3 loses against flat B3, by the number of k-means centroids per shard.

Issue 12 item 4 ("measure what it costs against flat METIS: within-cluster edge fraction, batch hardness").
Synthetic clustered unit vectors (``bench_b3.clustered``: N/50 topics, d = 384). One flat exact ``mine_b3``
gives the reference graph and hardness; then ``mine_b3_hierarchical`` with shards of ``--shard-size`` runs
once per value of ``--centroids`` (k-means centroids per shard of the coarse cut,
:func:`hardbatch.mining.hierarchical.coarse_shards`, with ``examples_per_centroid=0``; 1 = one centroid per
shard, the cut before :data:`~hardbatch.mining.hierarchical.CENTROIDS_PER_SHARD`), and once with the
library's default rule (``max(16 · shards, min(N / 400, 4096))`` centroids). All runs share one process.

Reported per run: seconds, batch hardness (mean teacher similarity inside a cluster; random groups and the
flat plan for reference), the fraction of the *flat* mutual graph's edges that fall inside a cluster, and
the plan's own ``stats["coarse_window_recall"]`` (how much of the flat exact rank windows the shards keep).

Time: flat O(N² d); each hierarchical run O(N · s · d) for shards of s, plus O(256 · C² · d) k-means
training for C centroids. Memory O(N · d) for the inputs (resident here) + one shard's blocks.

Usage: python benchmarks/bench_hierarchical.py [--n 100000] [--shard-size 6250] [--centroids 1,4,16,64]
Writes benchmarks/results/hierarchical_<N>_shards<S>.json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

from bench_b3 import BATCH, SKIP, WINDOW, K, clustered, machine

RESULTS = Path(__file__).parent / "results"


def _within(graph, clusters, num: int) -> float:
    """Fraction of the graph's (directed, stored) edges whose two ends share a cluster."""
    import numpy as np

    owner = np.full(num, -1)
    for index, members in enumerate(clusters):
        owner[members] = index
    inside = (owner[graph.row] == owner[graph.col]) & (owner[graph.row] >= 0)
    return float(inside.mean()) if graph.nnz else 0.0


def run(num: int, shard_size: int, centroids: list[int], threads: int) -> dict:
    import torch

    import hardbatch.mining.hierarchical as hierarchical
    from hardbatch.mining import mine_b3

    torch.set_num_threads(threads)
    query, positive = clustered(num)
    common = dict(
        batch_size=BATCH, cluster_size=K, skip=SKIP, window=WINDOW, device="cpu", show_progress=False,
        precision="fp32",
    )  # fmt: skip
    out: dict = {"n": num, "shard_size": shard_size, "load_average_1m_start": round(os.getloadavg()[0], 2)}
    started = time.perf_counter()
    flat = mine_b3(query, positive, **common)
    graph = flat.neighbors.tocoo()
    out["flat"] = {
        "seconds": round(time.perf_counter() - started, 2),
        "cluster_mean_sim": round(flat.stats["hardness"]["cluster_mean_sim"], 4),
        "random_mean_sim": round(flat.stats["hardness"]["random_mean_sim"], 4),
        "within_flat_graph": round(_within(graph, flat.clusters, num), 4),
    }
    print("flat", out["flat"], file=sys.stderr, flush=True)
    cut = hierarchical.coarse_shards
    rows = []
    try:
        # Per shard only (examples_per_centroid=0), then the library's default rule.
        for per_shard in [*centroids, None]:
            options = (
                {} if per_shard is None else {"centroids_per_shard": per_shard, "examples_per_centroid": 0}
            )
            hierarchical.coarse_shards = functools.partial(cut, **options)
            started = time.perf_counter()
            plan = hierarchical.mine_b3_hierarchical(query, positive, shard_size=shard_size, **common)
            row = {
                "centroids_per_shard": "default" if per_shard is None else per_shard,
                "shards": plan.params["hierarchical"]["shards"],
                "seconds": round(time.perf_counter() - started, 2),
                "cluster_mean_sim": round(plan.stats["hardness"]["cluster_mean_sim"], 4),
                "within_flat_graph": round(_within(graph, plan.clusters, num), 4),
                **plan.stats["coarse_window_recall"],
            }
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    finally:
        hierarchical.coarse_shards = cut
    out["hierarchical"] = rows
    out["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    return out


def markdown(report: dict) -> str:
    r, info = report["results"], report["machine"]
    flat = r["flat"]
    lines = [
        f"# Hierarchical vs flat B3 at N = {r['n']:,}, shards of {r['shard_size']:,} "
        "(`benchmarks/bench_hierarchical.py`)",
        "",
        f"Machine: {info['platform']}, CPU `{info['cpu_model']}`, {info['cpus']} CPUs, AMX {info['amx_bf16']}, "
        f"{report['params']['threads']} torch threads; load average {r['load_average_1m_start']} → "
        f"{r['load_average_1m_end']} (shared machine: compare rows of this run only).",
        "",
        f"Flat exact B3: {flat['seconds']} s, batch hardness {flat['cluster_mean_sim']} (random groups "
        f"{flat['random_mean_sim']}), {flat['within_flat_graph']:.1%} of its mutual graph's edges inside "
        "a cluster.",
        "",
        "| centroids per shard | shards | seconds | batch hardness | × flat hardness | flat-graph edges inside "
        "| flat window kept (in shard) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["hierarchical"]:
        kept = f"{row['window_recall']:.3f} ({row['shard_coverage']:.3f})" if "window_recall" in row else ""
        lines.append(
            f"| {row['centroids_per_shard']} | {row['shards']} | {row['seconds']} | {row['cluster_mean_sim']} "
            f"| {row['cluster_mean_sim'] / flat['cluster_mean_sim']:.2f} | {row['within_flat_graph']:.1%} "
            f"| {kept} |"
        )
    lines += [
        "",
        "Flat window kept: of a flat exact plan's rank window [p, p + m), the fraction the example's shard "
        "window keeps (in shard: the fraction inside its shard at all), on a sample of "
        f"{max((row.get('sample', 0) for row in r['hierarchical']), default=0)} examples "
        "(`stats['coarse_window_recall']`).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--shard-size", type=int, default=6_250)
    parser.add_argument(
        "--centroids", default="1,4,16,64", help="k-means centroids per shard, comma-separated"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--smoke", action="store_true", help="N = 3,000, shards of 1,000; nothing written")
    args = parser.parse_args()
    num, shard = (3_000, 1_000) if args.smoke else (args.n, args.shard_size)
    centroids = [int(value) for value in args.centroids.split(",") if value]
    report = {
        "benchmark": "hierarchical",
        "machine": machine(),
        "params": {"n": num, "shard_size": shard, "centroids": centroids, "threads": args.threads},
        "results": run(num, shard, centroids, args.threads),
    }
    text = markdown(report)
    if not args.smoke:
        from hardbatch.io import atomic_write, write_json

        stem = RESULTS / f"hierarchical_{num}_shards{shard}"
        write_json(stem.with_suffix(".json"), report)
        with atomic_write(stem.with_suffix(".md")) as handle:
            handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
