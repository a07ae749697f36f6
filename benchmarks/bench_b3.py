"""Benchmark: B3 mining (``hardbatch.mining.mine_b3``) per stage, at N = 10k / 50k / 100k, d = 384.

For every N, the pipeline runs twice: with the exact kNN (chunked torch matmul + topk) and with faiss HNSW
(recall@k of HNSW against exact measured on 1,000 rows). Each run is a fresh subprocess, so its peak RSS is
its own. Side-by-side comparisons in the same run:

* kNN: HNSW vs exact seconds (ratio) and HNSW recall;
* graph: our vectorised mutual-edge build (scipy A ∘ Aᵀ) vs the official code's approach (Python set of
  directed pairs, keep a pair when its reverse is present) on the very same window, at N = 10k;
* quality: mean teacher similarity sim(q_i, p_j) between batch members of B3 batches vs random batches.

Data: "random but clustered" unit vectors: N/50 topic centres, each example = centre + Gaussian noise
(query and positive with independent noise), so rank windows are meaningful but not trivially separable.

Complexity of each stage (N examples, d dims, skip p, window m, cluster size K):

* kNN exact: time O(N² d), memory O(chunk · N + N (p + m)).
* kNN HNSW: build O(N log N · M d), search O(N · ef · log N · d); memory O(N (d + M)).
* window + graph: O(N m log(N m)) time, O(N m) memory.
* partition: METIS ~O(N m) time and memory; exact-K repair O(N log N + E) per round.
* hardness: O(N K d).

Usage: python benchmarks/bench_b3.py [--sizes 10000,50000,100000] [--backends exact,hnsw]
Writes benchmarks/results/b3_scaling.json and b3_scaling.md and prints JSON and the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
DIM, SKIP, WINDOW, K, BATCH = 384, 30, 100, 32, 64


def clustered(num: int, dim: int = DIM, seed: int = 0):
    """(query, positive) float32 unit vectors around num/50 random topic centres."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, num // 50), dim), dtype=np.float32)
    topic = rng.integers(0, len(centres), num)
    noise = np.float32(1.0)

    def sample():
        x = centres[topic] + noise * rng.standard_normal((num, dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return sample(), sample()


def naive_mutual_edges(window) -> int:
    """The official B3 code's graph build: Python set of directed pairs, keep pairs whose reverse exists."""
    pairs = [(i, int(j)) for i, row in enumerate(window.tolist()) for j in row if j >= 0 and j != i]
    present = set(pairs)
    return sum(1 for i, j in pairs if (j, i) in present) // 2


def run_one(num: int, backend: str, threads: int) -> dict:
    """Child process: mine once and report the plan's stage statistics (+ peer comparisons at small N)."""
    import numpy as np
    import torch

    from hardbatch.graph.knn import knn
    from hardbatch.graph.rank_window import mutual_graph, rank_window, window_matrix
    from hardbatch.mining import cluster_hardness, mine_b3
    from hardbatch.progress import peak_rss_mb

    torch.set_num_threads(threads)
    query, positive = clustered(num)
    data_rss = peak_rss_mb()
    started = time.perf_counter()
    plan = mine_b3(
        query,
        positive,
        batch_size=BATCH,
        cluster_size=K,
        skip=SKIP,
        window=WINDOW,
        knn=backend,
        device="cpu",
        show_progress=False,
    )
    total = time.perf_counter() - started
    batches = np.array(plan.batches(0))
    random = np.random.default_rng(1).permutation(num)[: batches.size].reshape(batches.shape)
    result = {
        "n": num,
        "dim": DIM,
        "backend": backend,
        "seconds_total": round(total, 2),
        "rss_after_data_mb": round(data_rss, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "stages": plan.stats["stages"],
        "graph": plan.stats["graph"],
        "partition": plan.stats["partition"],
        "knn_recall": plan.stats.get("knn_recall"),
        "batch_sim_b3": round(cluster_hardness(query, positive, batches), 4),
        "batch_sim_random": round(cluster_hardness(query, positive, random), 4),
        "cluster_sim_b3": round(plan.stats["hardness"]["cluster_mean_sim"], 4),
    }
    if backend == "exact" and num <= 10_000:
        # Graph build: vectorised vs the official code's Python sets, on the same window.
        ranked = knn(
            query,
            positive,
            SKIP + WINDOW,
            exclude_self=True,
            normalize=True,
            device="cpu",
            show_progress=False,
        )
        window = np.asarray(rank_window(ranked.indices, SKIP, WINDOW))
        t0 = time.perf_counter()
        ours = mutual_graph(window_matrix(window)).nnz // 2
        t1 = time.perf_counter()
        theirs = naive_mutual_edges(window)
        t2 = time.perf_counter()
        assert ours == theirs, (ours, theirs)
        result["graph_vectorised_s"] = round(t1 - t0, 3)
        result["graph_python_sets_s"] = round(t2 - t1, 3)
    return result


def machine() -> dict:
    import faiss
    import numpy as np
    import pymetis
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "pymetis": getattr(pymetis, "version", "?"),
        "cuda": torch.cuda.is_available(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "note": "wall-clock; other jobs may share the machine, compare rows of one run only",
    }


def markdown(rows: list[dict], info: dict) -> str:
    lines = [
        "# B3 mining scaling (`benchmarks/bench_b3.py`)",
        "",
        f"d={DIM}, skip p={SKIP}, window m={WINDOW}, K={K}, |B|={BATCH}; synthetic clustered unit vectors.",
        f"Machine: {info['platform']}, {info['cpus']} CPUs, torch {info['torch']}, faiss {info['faiss']}, "
        f"CUDA={info['cuda']}.",
        "",
        "| N | kNN | kNN s | recall | graph s | METIS+repair s | hardness s | total s | peak RSS MiB | "
        "mutual edges | METIS parts min/max/empty | within-cluster edges | batch sim B3 / random |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["stages"]
        p = r["partition"]
        recall = "1 (exact)" if r["backend"] == "exact" else f"{r['knn_recall']:.3f}"
        lines.append(
            f"| {r['n']:,} | {r['backend']} | {s['knn']['seconds']:.1f} | {recall} | "
            f"{s['window']['seconds'] + s['graph']['seconds']:.2f} | {s['partition']['seconds']:.2f} | "
            f"{s['hardness']['seconds']:.2f} | {r['seconds_total']:.1f} | {r['peak_rss_mb']:.0f} | "
            f"{r['graph']['mutual_edges']:,} | {p['metis_min_part']}/{p['metis_max_part']}/{p['metis_empty_parts']} | "
            f"{p['within_edge_fraction']:.1%} | {r['batch_sim_b3']:.3f} / {r['batch_sim_random']:.3f} |"
        )
    lines.append("")
    by_n: dict[int, dict[str, dict]] = {}
    for r in rows:
        by_n.setdefault(r["n"], {})[r["backend"]] = r
    for n, pair in sorted(by_n.items()):
        if "exact" in pair and "hnsw" in pair:
            ratio = pair["exact"]["stages"]["knn"]["seconds"] / max(
                pair["hnsw"]["stages"]["knn"]["seconds"], 1e-9
            )
            lines.append(
                f"- N={n:,}: HNSW kNN is {ratio:.2f}× the speed of exact, recall@{SKIP + WINDOW} "
                f"{pair['hnsw']['knn_recall']:.3f}."
            )
    for r in rows:
        if "graph_python_sets_s" in r:
            lines.append(
                f"- N={r['n']:,}: mutual graph vectorised {r['graph_vectorised_s']:.3f} s vs Python sets (official "
                f"code's approach) {r['graph_python_sets_s']:.2f} s "
                f"({r['graph_python_sets_s'] / max(r['graph_vectorised_s'], 1e-9):.0f}× faster), same edges."
            )
    lines += [
        "",
        "Complexity: kNN exact O(N² d) time / O(chunk·N + N(p+m)) memory; HNSW O(N log N) build+search; "
        "graph O(N m log(N m)); METIS ≈ O(N m); repair O(N log N + E) per round; hardness O(N K d).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,50000,100000")
    parser.add_argument("--backends", default="exact,hnsw")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--one", nargs=2, metavar=("N", "BACKEND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HARDBATCH_PROGRESS", "0")
    if args.one:
        print(json.dumps(run_one(int(args.one[0]), args.one[1], args.threads)))
        return
    info = machine()
    params = {"dim": DIM, "skip": SKIP, "window": WINDOW, "cluster_size": K, "batch_size": BATCH}
    runs = [(int(s), b) for s in args.sizes.split(",") for b in args.backends.split(",")]
    rows: list[dict] = []
    for num, backend in runs:
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(num), backend, "--threads", str(args.threads)],
            check=True,
            capture_output=True,
            text=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"N={num:,} {backend}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        # Written after every run, so a long benchmark interrupted half-way still leaves its results.
        write_results(rows, info, params, complete=len(rows) == len(runs))
    report = write_results(rows, info, params, complete=True)
    print(json.dumps(report, indent=2))
    print(markdown(rows, info))


def write_results(rows: list[dict], info: dict, params: dict, *, complete: bool) -> dict:
    from hardbatch.io import atomic_write, write_json

    report = {
        "benchmark": "b3_scaling",
        "complete": complete,
        "machine": info,
        "params": params,
        "results": rows,
    }
    write_json(RESULTS / "b3_scaling.json", report)
    with atomic_write(RESULTS / "b3_scaling.md") as handle:
        handle.write(markdown(rows, info))
    return report


if __name__ == "__main__":
    main()
