"""Benchmark: the approximate kNN searches of mining against exact search and the bare matmul, in one run.

On one (query, positive) set (synthetic of ``bench_b3.py``'s kinds, or real embeddings from ``.npy`` files,
e.g. ``hardbatch embed codesearch:train -o emb/``), k = 130 (B3's skip 30 + window 100), 2 threads by default:

* the bare fp32 N × N matmul (blocks of 4,096 rows into a reused output; the yardstick of every ratio);
* exact ``knn_exact`` (precision auto: bf16 + fp32 re-scoring where bf16 is fast);
* ``knn_ivf`` (``knn="ivf_torch"``) calibrated to window recall 0.95, as mining runs it (it falls back to
  exact search where that is cheaper), and once more with the fallback off, to show what the grouped search
  itself costs at the calibrated ``nprobe``;
* ``knn_ivf`` at fixed ``--nprobes`` (the trade-off below the target);
* faiss ``IndexIVFFlat`` calibrated to the same target (the peer), unless ``--skip-faiss``.

Every approximate row reports its window recall [30, 130) on 1,000 rows against exact search (independent of
its calibration sample) and its window hardness (``hardbatch.graph.knn.recall_report``: 1 = as hard as the
exact window, 0 = random keys). Time: see ``hardbatch.graph.ivf``; memory is not measured here (one process).

Usage:
    python benchmarks/bench_ivf.py --data lowdim --n 100000
    python benchmarks/bench_ivf.py --query emb/query.npy --positive emb/positive.npy --tag codesearch
Writes benchmarks/results/ivf_<data>_<N>[_<tag>].json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from bench_b3 import DATA_KINDS, SKIP, WINDOW, machine

RESULTS = Path(__file__).parent / "results"
K = SKIP + WINDOW


def bare_matmul(query, positive) -> float:
    import torch

    keys = torch.from_numpy(positive)
    out = torch.empty(min(4096, len(query)), len(positive))
    started = time.perf_counter()
    for lo in range(0, len(query), 4096):
        block = torch.from_numpy(query[lo : lo + 4096])
        torch.matmul(block, keys.T, out=out[: len(block)])
    return time.perf_counter() - started


def window_quality(result, query, positive) -> tuple[float, float]:
    """(window recall, window hardness) of ranks [SKIP, K) on 1,000 rows against exact search."""
    from hardbatch.graph.knn import recall_report

    report = recall_report(
        result, query, positive, ranges={"w": (SKIP, K)}, sample=1000, exclude_self=True, seed=99, device="cpu",
        hardness=(SKIP, K),
    )  # fmt: skip
    return round(report["w"], 4), round(report["hardness"], 4)


def run(query, positive, skip_faiss: bool = False, nprobes: tuple[int, ...] = ()) -> list[dict]:
    import hardbatch.graph.ivf as ivf
    from hardbatch.graph.knn import knn_exact, knn_faiss

    rows: list[dict] = []
    matmul = bare_matmul(query, positive)
    rows.append({"method": "bare fp32 N×N matmul", "seconds": round(matmul, 2)})

    def timed(name: str, search, recall: bool = True) -> None:
        started = time.perf_counter()
        result = search()
        seconds = time.perf_counter() - started
        row = {"method": name, "seconds": round(seconds, 2), "x_matmul": round(seconds / matmul, 3)}
        if recall:
            row["window_recall"], row["window_hardness"] = window_quality(result, query, positive)
        info = {key: value for key, value in result.info.items() if key != "calibration"}
        row.update(info=info, calibration=result.info.get("calibration"))
        rows.append(row)
        print(row, flush=True)

    timed(
        "exact knn_exact (precision auto)",
        lambda: knn_exact(query, positive, K, exclude_self=True, device="cpu"),
    )
    options = dict(exclude_self=True, recall_columns=(SKIP, K), device="cpu", show_progress=False)
    timed(
        "ivf_torch, calibrated to 0.95 (as mining runs it)",
        lambda: ivf.knn_ivf(query, positive, K, **options),
    )
    threshold = ivf._EXACT_ABOVE
    ivf._EXACT_ABOVE = 1.01  # the grouped search itself, however much it searches
    try:
        timed(
            "ivf_torch, calibrated to 0.95, exact fallback off",
            lambda: ivf.knn_ivf(query, positive, K, **options),
        )
    finally:
        ivf._EXACT_ABOVE = threshold
    for value in nprobes:  # the recall / hardness / time trade-off below the target
        timed(
            f"ivf_torch at nprobe {value} (fixed)",
            lambda v=value: ivf.knn_ivf(query, positive, K, nprobe=v, **options),
        )
    if not skip_faiss:
        timed(
            "faiss IndexIVFFlat, calibrated to 0.95",
            lambda: knn_faiss(
                query,
                positive,
                K,
                index="ivf",
                exclude_self=True,
                recall_target=0.95,
                recall_columns=(SKIP, K),
            ),
        )
    return rows


def markdown(report: dict) -> str:
    info = report["machine"]
    lines = [
        f"# Approximate kNN for mining: {report['data']}, N = {report['n']:,}, d = {report['dim']}, k = {K} "
        "(`benchmarks/bench_ivf.py`)",
        "",
        f"Machine: CPU `{info.get('cpu_model')}` ({info.get('cpu_vendor', '?')}), amx_bf16={info.get('amx_bf16')}, "
        f"avx512_bf16={info.get('avx512_bf16')}; {info['cpus']} CPUs, {report['threads']} threads; load average "
        f"{report['load_start']} → {report['load_end']}. Window recall: ranks [{SKIP}, {K}) on 1,000 rows "
        "against exact search; window hardness: (mean score of the found window − random keys) / (exact window − "
        "random keys), 1 = as hard as exact.",
        "",
        "| method | seconds | × bare fp32 matmul | window recall | window hardness | nprobe / nlist | searched | notes |",
        "|---|---:|---:|---:|---:|---|---:|---|",
    ]
    for row in report["rows"]:
        info = row.get("info", {})
        probe = f"{info['nprobe']} / {info['nlist']}" if "nprobe" in info else ""
        notes = []
        if "exact_fallback" in info:
            notes.append(f"exact fallback: {info['exact_fallback']}")
        if info.get("precision"):
            notes.append(info["precision"])
        if row.get("calibration"):
            notes.append(f"calibration {row['calibration']}")
        lines.append(
            f"| {row['method']} | {row['seconds']} | {row.get('x_matmul', 1.0)} | {row.get('window_recall', '')} | {row.get('window_hardness', '')} | "
            f"{probe} | {info.get('searched_fraction', '')} | {'; '.join(notes)} |"
        )
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="lowdim", choices=sorted(DATA_KINDS))
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--query", help="query embeddings .npy (instead of --data)")
    parser.add_argument("--positive", help="positive embeddings .npy (with --query)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-faiss", action="store_true")
    parser.add_argument(
        "--nprobes", default="", help="also ivf_torch at these fixed nprobe values (e.g. 4,16)"
    )
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    import numpy as np
    import torch

    from hardbatch.io import atomic_write, write_json

    torch.set_num_threads(args.threads)
    os.environ.setdefault("HARDBATCH_PROGRESS", "0")
    if args.query:
        query = np.ascontiguousarray(np.load(args.query), dtype=np.float32)
        positive = np.ascontiguousarray(np.load(args.positive), dtype=np.float32)
        data = f"embeddings `{args.query}`"
    else:
        query, positive = DATA_KINDS[args.data](args.n)
        data = f"synthetic `{args.data}`"
    report = {
        "benchmark": "ivf",
        "machine": machine(),
        "data": data,
        "n": len(query),
        "dim": int(query.shape[1]),
        "threads": args.threads,
        "load_start": round(os.getloadavg()[0], 2),
    }
    report["rows"] = run(
        query, positive, args.skip_faiss, tuple(int(v) for v in args.nprobes.split(",") if v)
    )
    report["load_end"] = round(os.getloadavg()[0], 2)
    stem = f"ivf_{'npy' if args.query else args.data}_{len(query)}" + (f"_{args.tag}" if args.tag else "")
    write_json(RESULTS / f"{stem}.json", report)
    with atomic_write(RESULTS / f"{stem}.md") as handle:
        handle.write(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
