"""Benchmark: rows per score block of the exact kNN (``knn_exact``), bf16 and fp32, against the bare matmul.

``knn_exact`` cuts the rows into blocks whose score block holds a fixed number of scores (``_auto_chunk``:
64M scores, 256 MiB of fp32). In bf16 mode each block pays fixed costs (the pre-selection's passes, the fp32
re-scoring of its candidates) that a bigger block spreads over more rows. This measures ``--rows`` queries
against all N keys (k = 131, ``exclude_self``, as B3 searches) with blocks of ``--entries`` scores each,
side by side with the bare matmul of the same blocks in the same precision, repeats interleaved. Every
block size must give the same answer (asserted). Peak memory growth of each search over the resident data
(``VmHWM`` reset through ``/proc/self/clear_refs``, Linux) is reported too.

Usage:
    python benchmarks/bench_exact_blocks.py --n 100000 --rows 8192 --precision bf16
Writes benchmarks/results/exact_blocks_<N>_<precision>[_<tag>].json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench_b3 import DATA_KINDS, machine
from bench_ivf_blocks import _peak_kib, _reset_peak
from hardbatch.graph.knn import _auto_chunk

RESULTS = Path(__file__).parent / "results"
K = 131


def bare_matmul(rows, keys, chunk: int) -> float:
    """Seconds of the bare products of ``rows`` with ``keys`` (same dtype) in blocks of ``chunk`` rows."""
    import torch

    out = torch.empty(min(chunk, len(rows)), len(keys), dtype=keys.dtype)
    started = time.perf_counter()
    for lo in range(0, len(rows), chunk):
        part = rows[lo : lo + chunk]
        torch.matmul(part, keys.T, out=out[: len(part)])
    return time.perf_counter() - started


def run(n: int, rows: int, data: str, precision: str, entries: list[int], repeats: int) -> dict:
    import numpy as np
    import torch

    from hardbatch.graph.knn import knn_exact

    query, positive = DATA_KINDS[data](n)
    query = np.ascontiguousarray(query[:rows])
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    key_t = torch.from_numpy(positive).to(dtype)
    row_t = torch.from_numpy(query).to(dtype)
    times: dict[int, list[float]] = {e: [] for e in entries}
    bare: dict[int, list[float]] = {e: [] for e in entries}
    peaks: dict[int, int | None] = {}
    answers, infos = {}, {}
    for _ in range(repeats):
        for e in entries:
            chunk = _auto_chunk(n, e)
            bare[e].append(bare_matmul(row_t, key_t, chunk))
            _reset_peak()
            before = _peak_kib()
            started = time.perf_counter()
            # Rows are the first `rows` queries, keys all positives: row r's own key is column r.
            result = knn_exact(
                query, positive, K, exclude_self=True, row_offset=0, precision=precision, chunk_size=chunk,
                device="cpu",
            )  # fmt: skip
            times[e].append(time.perf_counter() - started)
            after = _peak_kib()
            peaks[e] = None if before is None or after is None else (after - before) // 1024
            answers[e], infos[e] = result.indices, result.info
    first = answers[entries[0]]
    assert all(np.array_equal(first, other) for other in answers.values()), "block size changed the answer"
    table = [
        {
            "block_entries": e, "rows_per_block": _auto_chunk(n, e),
            "search_seconds": [round(t, 3) for t in times[e]], "bare_seconds": [round(t, 3) for t in bare[e]],
            "search_x_bare": round(min(times[e]) / min(bare[e]), 3), "peak_growth_mib": peaks[e],
            "rows_widened": infos[e].get("rows_widened"), "fp32_rows_redone": infos[e].get("fp32_rows_redone"),
        }
        for e in entries
    ]  # fmt: skip
    return {
        "n": n, "rows": rows, "data": data, "precision": precision, "k": K, "repeats": repeats,
        "same_answer": True, "machine": machine(), "table": table,
    }  # fmt: skip


def markdown(report: dict) -> str:
    lines = [
        f"# Rows per score block of the exact kNN, {report['rows']:,} rows × {report['n']:,} keys "
        f"`{report['data']}`, {report['precision']}",
        "",
        "Machine: {platform}, CPU `{cpu}`, amx_bf16={amx_bf16}, avx512_bf16={avx512_bf16}, torch {torch}, "
        "{torch_threads} threads, load {load_average_1m}".format(**report["machine"]),
        "",
        f"k = {report['k']}, exclude_self; best of {report['repeats']} interleaved repeats; bare matmul in "
        f"{report['precision']} with the same blocks; same answer at every block size: {report['same_answer']}.",
        "",
        "| scores per block | rows per block | kNN s (each repeat) | bare matmul s | kNN × bare | peak growth MiB | rows widened / redone |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["table"]:
        lines.append(
            f"| {row['block_entries']:,} | {row['rows_per_block']} | {row['search_seconds']} | "
            f"{row['bare_seconds']} | {row['search_x_bare']} | {row['peak_growth_mib']} | "
            f"{row['rows_widened']} / {row['fp32_rows_redone']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="clustered", choices=sorted(DATA_KINDS))
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--entries", type=int, nargs="+", default=[1 << 26, 1 << 27, 1 << 28])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    report = run(args.n, args.rows, args.data, args.precision, args.entries, args.repeats)
    name = f"exact_blocks_{args.n}_{args.precision}" + (f"_{args.tag}" if args.tag else "")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
