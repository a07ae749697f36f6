"""Benchmark: chunked exact retrieval evaluation vs the naive full queries × corpus matrix.

Both methods run the same code (:func:`hardbatch.evaluate.retrieval_metrics`); "naive" uses one block with
all queries (the full Q × N score matrix, as a plain ``scores = q @ c.T; topk`` would), "chunked" the default
~256 MB blocks. Each (method, N) runs in a fresh subprocess so its peak RSS is its own; we report the peak
*above* the RSS after the embeddings exist, i.e. the memory the evaluation itself needs. Metrics of both
methods must be identical (same ranking rule), which the script asserts.

Usage: python benchmarks/bench_evaluate.py [--sizes 4000,8000,16000,24000,32000] [--naive-max 24000]
Writes benchmarks/results/evaluate.json and evaluate.md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from hardbatch.machine import describe_machine

RESULTS = Path(__file__).parent / "results"


def run_one(num: int, dim: int, method: str, threads: int) -> dict:
    """Child process: build paired embeddings, evaluate once, report time and extra peak RSS."""
    import numpy as np
    import torch

    from hardbatch.evaluate import retrieval_metrics
    from hardbatch.evaluate.search import auto_chunk_size
    from hardbatch.progress import peak_rss_mb

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((num, dim), dtype=np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    # Queries: noisy copies of their positives, so metrics are neither 0 nor 1.
    queries = corpus + rng.standard_normal((num, dim), dtype=np.float32) * np.float32(4.5 / np.sqrt(dim))
    chunk = num if method == "naive" else auto_chunk_size(num, num)
    # Warm up torch kernels on a tiny problem so one-time costs are not attributed to either method.
    retrieval_metrics(queries[:64], corpus[:64], device="cpu", show_progress=False)
    baseline = peak_rss_mb()
    started = time.perf_counter()
    metrics = retrieval_metrics(queries, corpus, chunk_size=chunk, device="cpu", show_progress=False)
    seconds = time.perf_counter() - started
    return {
        "n": num,
        "dim": dim,
        "method": method,
        "chunk_size": chunk,
        "score_block_mb": round(chunk * num * 4 / 2**20, 1),
        "seconds": round(seconds, 3),
        "extra_peak_rss_mb": round(peak_rss_mb() - baseline, 1),
        "metrics": {k: round(v, 6) for k, v in metrics.items()},
    }


def spawn(num: int, dim: int, method: str, threads: int) -> dict:
    command = [sys.executable, __file__, "--child", f"{num},{dim},{method},{threads}"]
    env = {**os.environ, "HARDBATCH_PROGRESS": "0"}
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict], info: dict) -> str:
    lines = [
        "# Retrieval evaluation: chunked exact search vs full score matrix",
        "",
        f"Machine: {info['platform']}, {info['cpus']} CPUs ({info['cpu']}), torch {info['torch']}, threads {info['threads']}; "
        f"load average at start {info['load_average_1m']:.1f} (shared machine: compare ratios, not absolute times).",
        "",
        "| N (= Q) | method | chunk | score block MB | seconds | extra peak RSS MB | time naive/chunked | memory naive/chunked | mrr@10 |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_key = {(r["n"], r["method"]): r for r in rows}
    for r in rows:
        naive = by_key.get((r["n"], "naive"))
        chunked = by_key.get((r["n"], "chunked"))
        ratio_t = ratio_m = ""
        if r["method"] == "chunked" and naive:
            ratio_t = f"{naive['seconds'] / max(chunked['seconds'], 1e-9):.2f}"
            ratio_m = f"{naive['extra_peak_rss_mb'] / max(chunked['extra_peak_rss_mb'], 1.0):.1f}"
        lines.append(
            f"| {r['n']:,} | {r['method']} | {r['chunk_size']:,} | {r['score_block_mb']:,} | {r['seconds']:.2f} | "
            f"{r['extra_peak_rss_mb']:,} | {ratio_t} | {ratio_m} | {r['metrics']['mrr@10']:.4f} |"
        )
    lines += [
        "",
        "Time grows as O(N²·d) for both; extra memory is O(N²) for the full matrix and O(chunk·N) ≈ 256 MB "
        "blocks (score block + top-k temporaries) for the chunked search (plus O(N) per metric). Metrics are identical for both methods.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4000,8000,16000,24000,32000")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--naive-max", type=int, default=24000, help="largest N for the full-matrix method")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        num, dim, method, threads = args.child.split(",")
        print(json.dumps(run_one(int(num), int(dim), method, int(threads))))
        return

    info = {**describe_machine(), "threads": args.threads}
    rows = []
    for num in (int(s) for s in args.sizes.split(",")):
        methods = ["chunked", "naive"] if num <= args.naive_max else ["chunked"]
        for method in methods:
            row = spawn(num, args.dim, method, args.threads)
            rows.append(row)
            print(
                f"N={num:>7,} {method:8s} {row['seconds']:8.2f} s  +{row['extra_peak_rss_mb']:8.1f} MB  "
                f"mrr@10={row['metrics']['mrr@10']:.4f}",
                file=sys.stderr,
            )
        pair = [r for r in rows if r["n"] == num]
        if len(pair) == 2:
            assert pair[0]["metrics"] == pair[1]["metrics"], f"methods disagree at N={num}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "evaluate", "machine": info, "rows": rows}
    (RESULTS / "evaluate.json").write_text(json.dumps(payload, indent=2) + "\n")
    table = markdown(rows, info)
    (RESULTS / "evaluate.md").write_text(table)
    print(json.dumps(payload, indent=2))
    print(table)


if __name__ == "__main__":
    main()
