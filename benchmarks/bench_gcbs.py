"""Benchmark: one GCBS refresh (``hardbatch.mining.mine_gcbs``) per stage at N = 100k, d = 384.

Target: a refresh (everything but the embedding pass) in <= 60 s on 2 CPU cores.

Two graph methods side by side in one run: ``exact`` (the chunked full similarity pass) and ``ivf`` (faiss
IVF range search over ``nprobe`` of ~4·sqrt(N) lists, approximate). For ``ivf`` the edge recall against
the exact graph is reported (same threshold; IVF edges are a subset, so recall = nnz_ivf / nnz_exact).

Stages timed (``StageTimer``: seconds and peak RSS): quantile estimation (sampled sub-matrix), threshold
graph (chunked N × N similarity pass + thresholding, never materialised), RCM, batching. Side by side in the
same run, for reference:

* the matmul floor: the time of the bare similarity matmul (no thresholding), measured on a slice of rows
  and extrapolated — no exact GCBS can be faster than this on the machine;
* a random sampler's epoch (``RandomBatchSampler.batches``);
* batch hardness under the same embeddings (mean in-batch negative similarity, in-batch InfoNCE) for GCBS
  batches vs random batches, and the fraction of graph edges that land inside a batch.

Data: "random but clustered" unit vectors: N/50 topic centres, each example = centre + Gaussian noise
(query and positive with independent noise), as in ``bench_b3.py``.

Complexity: O(N² d) time for the similarity pass (dominant), O(chunk · N + nnz) memory.

Usage: python benchmarks/bench_gcbs.py [--n 100000] [--dim 384] [--batch-size 64] [--quantile 0.999]
       [--target-degree D] [--methods exact,ivf] [--nprobe 32]
Writes benchmarks/results/gcbs.json and gcbs.md and prints JSON and the table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from hardbatch.machine import describe_machine

RESULTS = Path(__file__).parent / "results"


def clustered(num: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, num // 50), dim), dtype=np.float32)
    topic = rng.integers(0, len(centres), num)

    def sample() -> np.ndarray:
        x = centres[topic] + rng.standard_normal((num, dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return sample(), sample()


def matmul_floor(x: np.ndarray, y: np.ndarray, rows: int = 8192, chunk: int = 2048) -> float:
    """Seconds of the bare X·Yᵀ pass, measured on ``rows`` rows and scaled to all of X."""
    xt, yt = torch.from_numpy(x[:rows]), torch.from_numpy(y)
    start = time.perf_counter()
    for s in range(0, len(xt), chunk):
        _ = xt[s : s + chunk] @ yt.T
    return (time.perf_counter() - start) * len(x) / len(xt)


def machine() -> dict:
    info = describe_machine(packages=("faiss",))
    return {**info, "cpu_count": info["cpus"]}


def run_method(x: np.ndarray, y: np.ndarray, method: str, args: argparse.Namespace) -> dict:
    """One timed GCBS refresh with ``method`` and the hardness of its batches vs random ones."""
    from hardbatch.evaluate.hardness import batch_hardness, random_batches_like, summarize_hardness
    from hardbatch.mining.gcbs import mine_gcbs

    start = time.perf_counter()
    result = mine_gcbs(
        x, y, args.batch_size, quantile=args.quantile, target_degree=args.target_degree, device="cpu",
        keep_graph=False, graph_method=method, nprobe=args.nprobe,
    )  # fmt: skip
    total = time.perf_counter() - start
    gcbs_h = summarize_hardness(batch_hardness(x, y, result.batches))
    rand_h = summarize_hardness(batch_hardness(x, y, random_batches_like(result.batches, args.n)))
    stages = {name: value["seconds"] for name, value in result.seconds.items()}
    s = result.stats
    keys = ("neg_sim_mean", "hardest_neg_sim_mean", "infonce", "recall@1")
    return {
        "quantile": result.quantile,
        "threshold": result.threshold,
        "seconds": {**stages, "total_refresh": round(total, 3)},
        "peak_rss_mb": max(v["peak_rss_mb"] for v in result.seconds.values()),
        "meets_target": total <= 60,
        **{
            k: s[k]
            for k in (
                "nnz_directed",
                "edges",
                "degree_mean",
                "degree_max",
                "isolated_fraction",
                "components",
                "giant_component_fraction",
                "bandwidth_before",
                "bandwidth_after",
                "same_batch_edge_fraction",
                "same_batch_edge_fraction_random",
            )
        },
        "hardness_gcbs": {k: gcbs_h[k] for k in keys},
        "hardness_random": {k: rand_h[k] for k in keys},
    }


def to_markdown(record: dict) -> str:
    methods = list(record["methods"])
    runs = [record["methods"][m] for m in methods]

    def row(name: str, fn) -> str:
        return f"| {name} | " + " | ".join(str(fn(r)) for r in runs) + " |"

    lines = [
        f"# GCBS refresh, N={record['n']}, d={record['dim']}, batch {record['batch_size']}, "
        f"q={runs[0]['quantile']:.6f}",
        "",
        f"Machine: {record['machine']['platform']}, {record['machine']['cpu_count']} CPUs, torch "
        f"{record['machine']['torch']}, load average before {record['machine']['load_average_1m_before']:.2f}. "
        f"IVF: nprobe {record['nprobe']} of ~4·sqrt(N) lists.",
        "",
        "| metric | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
        row("quantile estimation (s)", lambda r: r["seconds"]["quantile"]),
        row("threshold graph (s)", lambda r: r["seconds"]["threshold_graph"]),
        row("RCM (s)", lambda r: r["seconds"]["rcm"]),
        row("batching (s)", lambda r: r["seconds"]["batching"]),
        row("**total refresh (s)**", lambda r: f"**{r['seconds']['total_refresh']:.1f}**"),
        row("peak RSS (MB)", lambda r: r["peak_rss_mb"]),
        row("nnz (directed, no diagonal)", lambda r: r["nnz_directed"]),
        row("edge recall vs exact", lambda r: r.get("edge_recall_vs_exact", "–")),
        row("bandwidth before -> after", lambda r: f"{r['bandwidth_before']} -> {r['bandwidth_after']}"),
        row("edges inside a batch (GCBS / random)",
            lambda r: f"{r['same_batch_edge_fraction']:.3f} / {r['same_batch_edge_fraction_random']:.5f}"),
        row("mean in-batch negative sim (GCBS / random)",
            lambda r: f"{r['hardness_gcbs']['neg_sim_mean']:.3f} / {r['hardness_random']['neg_sim_mean']:.3f}"),
        row("in-batch InfoNCE (GCBS / random)",
            lambda r: f"{r['hardness_gcbs']['infonce']:.3f} / {r['hardness_random']['infonce']:.3f}"),
        "",
        f"Matmul floor of an exact pass, est.: {record['matmul_floor_seconds_est']} s. Random sampler epoch: "
        f"{record['random_sampler_epoch_seconds']} s.",
        "",
        "Target <= 60 s: "
        + ", ".join(f"{m} {'met' if r['meets_target'] else 'NOT met'}" for m, r in zip(methods, runs))
        + ".",
    ]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--quantile", type=float, default=None)
    parser.add_argument("--target-degree", type=float, default=None)
    parser.add_argument("--methods", default="exact,ivf", help="graph methods to run, side by side")
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("-o", "--output", "--out", dest="out", default=str(RESULTS / "gcbs"))
    args = parser.parse_args()
    os.environ.setdefault("HARDBATCH_PROGRESS", "0")
    from hardbatch.samplers import RandomBatchSampler

    x, y = clustered(args.n, args.dim)
    load_before = os.getloadavg()[0]
    floor = matmul_floor(x, y)
    start = time.perf_counter()
    RandomBatchSampler(num_examples=args.n, batch_size=args.batch_size).batches(0)
    random_seconds = time.perf_counter() - start
    methods = {m: run_method(x, y, m, args) for m in args.methods.split(",") if m}
    if "exact" in methods:
        for name, run in methods.items():
            if name != "exact":
                run["edge_recall_vs_exact"] = round(
                    run["nnz_directed"] / max(1, methods["exact"]["nnz_directed"]), 4
                )
    record = {
        "benchmark": "gcbs_refresh",
        "n": args.n,
        "dim": args.dim,
        "batch_size": args.batch_size,
        "nprobe": args.nprobe,
        "methods": methods,
        "matmul_floor_seconds_est": round(floor, 2),
        "random_sampler_epoch_seconds": round(random_seconds, 4),
        "target_seconds": 60,
        "machine": {**machine(), "load_average_1m_before": load_before},
    }
    print(json.dumps(record, indent=2))
    table = to_markdown(record)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
