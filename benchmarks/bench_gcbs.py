"""Benchmark: one GCBS refresh (``hardbatch.mining.mine_gcbs``) per stage at N = 100k, d = 384.

Target: a refresh (everything but the embedding pass) in <= 60 s on 2 CPU cores.

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
       [--target-degree D]
Writes benchmarks/results/gcbs.json and gcbs.md and prints JSON and the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

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
    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--quantile", type=float, default=None)
    parser.add_argument("--target-degree", type=float, default=None)
    parser.add_argument("--out", default=str(RESULTS / "gcbs"))
    args = parser.parse_args()
    os.environ.setdefault("HARDBATCH_PROGRESS", "0")

    from hardbatch.evaluate.hardness import batch_hardness, random_batches_like, summarize_hardness
    from hardbatch.mining.gcbs import mine_gcbs
    from hardbatch.samplers import RandomBatchSampler

    x, y = clustered(args.n, args.dim)
    load_before = os.getloadavg()[0]
    floor = matmul_floor(x, y)
    start = time.perf_counter()
    result = mine_gcbs(
        x, y, args.batch_size, quantile=args.quantile, target_degree=args.target_degree, device="cpu",
        keep_graph=False,
    )  # fmt: skip
    total = time.perf_counter() - start
    start = time.perf_counter()
    RandomBatchSampler(num_examples=args.n, batch_size=args.batch_size).batches(0)
    random_seconds = time.perf_counter() - start
    gcbs_h = summarize_hardness(batch_hardness(x, y, result.batches))
    rand_h = summarize_hardness(batch_hardness(x, y, random_batches_like(result.batches, args.n)))
    stages = {name: value["seconds"] for name, value in result.seconds.items()}
    s = result.stats
    record = {
        "benchmark": "gcbs_refresh",
        "n": args.n,
        "dim": args.dim,
        "batch_size": args.batch_size,
        "quantile": result.quantile,
        "threshold": result.threshold,
        "seconds": {**stages, "total_refresh": round(total, 3)},
        "peak_rss_mb": max(v["peak_rss_mb"] for v in result.seconds.values()),
        "matmul_floor_seconds_est": round(floor, 2),
        "refresh_over_matmul_floor": round(total / floor, 2),
        "similarity_gflops": round(2 * args.n * args.n * args.dim / stages["threshold_graph"] / 1e9, 1),
        "random_sampler_epoch_seconds": round(random_seconds, 4),
        "nnz_directed": s["nnz_directed"],
        "edges_undirected": s["edges"],
        "degree_mean": s["degree_mean"],
        "degree_max": s["degree_max"],
        "isolated_fraction": s["isolated_fraction"],
        "components": s["components"],
        "giant_component_fraction": s["giant_component_fraction"],
        "bandwidth_before": s["bandwidth_before"],
        "bandwidth_after": s["bandwidth_after"],
        "same_batch_edge_fraction": s["same_batch_edge_fraction"],
        "same_batch_edge_fraction_random": s["same_batch_edge_fraction_random"],
        "hardness_gcbs": {
            k: gcbs_h[k] for k in ("neg_sim_mean", "hardest_neg_sim_mean", "infonce", "recall@1")
        },
        "hardness_random": {
            k: rand_h[k] for k in ("neg_sim_mean", "hardest_neg_sim_mean", "infonce", "recall@1")
        },
        "target_seconds": 60,
        "meets_target": total <= 60,
        "machine": {**machine(), "load_average_1m_before": load_before},
    }
    print(json.dumps(record, indent=2))
    rows = [
        ("quantile estimation (s)", stages["quantile"]),
        ("threshold graph (s)", stages["threshold_graph"]),
        ("RCM (s)", stages["rcm"]),
        ("batching (s)", stages["batching"]),
        ("total refresh (s)", round(total, 2)),
        ("matmul floor, est. (s)", record["matmul_floor_seconds_est"]),
        ("random sampler epoch (s)", record["random_sampler_epoch_seconds"]),
        ("peak RSS (MB)", record["peak_rss_mb"]),
        ("nnz (directed, no diagonal)", s["nnz_directed"]),
        ("bandwidth before -> after", f"{s['bandwidth_before']} -> {s['bandwidth_after']}"),
        ("edges inside a batch (GCBS / random)",
         f"{s['same_batch_edge_fraction']:.3f} / {s['same_batch_edge_fraction_random']:.5f}"),
        ("mean in-batch negative sim (GCBS / random)",
         f"{gcbs_h['neg_sim_mean']:.3f} / {rand_h['neg_sim_mean']:.3f}"),
        ("in-batch InfoNCE (GCBS / random)", f"{gcbs_h['infonce']:.3f} / {rand_h['infonce']:.3f}"),
    ]  # fmt: skip
    table = [
        f"# GCBS refresh, N={args.n}, d={args.dim}, batch {args.batch_size}, q={result.quantile:.6f}",
        "",
        f"Machine: {record['machine']['platform']}, {record['machine']['cpu_count']} CPUs, torch "
        f"{record['machine']['torch']}, load average before {load_before:.2f}.",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in rows],
        "",
        f"Target <= 60 s: {'met' if record['meets_target'] else 'NOT met'}.",
    ]
    print("\n".join(table))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
