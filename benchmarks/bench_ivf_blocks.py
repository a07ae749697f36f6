"""Benchmark: rows per bf16 score block in the grouped IVF search, on the layout a 1M mine searches.

At 1M pairs and window recall 0.95 each group (~1,000 rows) probes ~N/4 keys, so the score block of a group
is far larger than one 256 MiB block and is cut into row chunks. This measures, on sampled groups of a real
layout (``ivf_layout`` with a fixed ``nprobe``, k = 131 as B3 searches), the bf16 search with blocks of
``--entries`` scores each (64M: the fp32-sized blocks used before; 128M: 256 MiB of bf16, the default),
side by side with the bare bf16 matmul of the same (rows × candidates) products in the same run, repeats
interleaved. Every block size must give the same answer (asserted). Peak memory growth of each search over
the resident data (``VmHWM`` reset through ``/proc/self/clear_refs``, Linux) is reported too.

Usage:
    python benchmarks/bench_ivf_blocks.py --n 1000000 --nprobe 256 --groups 24
Writes benchmarks/results/ivf_blocks_<N>[_<tag>].json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench_b3 import DATA_KINDS, machine
from hardbatch.graph.knn import _auto_chunk

RESULTS = Path(__file__).parent / "results"
K = 131


def _peak_kib() -> int | None:
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        return None


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


def bare_bf16(query, key_t, layout, groups, entries: int) -> float:
    """Seconds of the bare bf16 products of the sampled groups, in chunks of ``entries`` scores."""
    import numpy as np
    import torch

    row_groups, key_lists = layout.buckets()
    key_low = key_t.to(torch.bfloat16)
    seconds = 0.0
    for group in groups:
        ids = row_groups.rows_of(int(group))
        keys = key_low.index_select(
            0, torch.as_tensor(key_lists.members(row_groups.probed(int(group), layout.nprobe, key_lists, K)))
        )
        rows = torch.from_numpy(np.ascontiguousarray(query[ids])).to(torch.bfloat16)
        chunk = _auto_chunk(len(keys), entries)
        out = torch.empty(min(chunk, len(rows)), len(keys), dtype=torch.bfloat16)
        started = time.perf_counter()
        for lo in range(0, len(rows), chunk):
            part = rows[lo : lo + chunk]
            torch.matmul(part, keys.T, out=out[: len(part)])
        seconds += time.perf_counter() - started
    return seconds


def run(n: int, data: str, nprobe: int, num_groups: int, entries: list[int], repeats: int) -> dict:
    import numpy as np

    import hardbatch.graph.ivf as ivf

    query, positive = DATA_KINDS[data](n)
    started = time.perf_counter()
    layout, key_t = ivf.ivf_layout(
        query, positive, K, exclude_self=True, nprobe=nprobe, recall_target=None, device="cpu"
    )
    layout_seconds = time.perf_counter() - started
    sizes = np.bincount(layout.row_groups, minlength=len(layout.probe_order))
    rng = np.random.default_rng(0)
    groups = np.sort(
        rng.choice(np.flatnonzero(sizes), min(num_groups, int((sizes > 0).sum())), replace=False)
    )
    products = int(layout.group_products(K, True)[groups].sum())
    times: dict[int, list[float]] = {e: [] for e in entries}
    bare: dict[int, list[float]] = {e: [] for e in entries}
    peaks: dict[int, int | None] = {}
    answers = {}
    for _ in range(repeats):
        for e in entries:
            bare[e].append(bare_bf16(query, key_t, layout, groups, e))
            ivf._BF16_BLOCK_ENTRIES = e
            _reset_peak()
            before = _peak_kib()
            started = time.perf_counter()
            _, indices, _, _ = ivf.search_groups(
                query, key_t, K, layout, groups, exclude_self=True, precision="bf16", show_progress=False
            )
            times[e].append(time.perf_counter() - started)
            after = _peak_kib()
            peaks[e] = None if before is None or after is None else (after - before) // 1024
            answers[e] = indices
    first = answers[entries[0]]
    assert all(np.array_equal(first, other) for other in answers.values()), "block size changed the answer"
    table = []
    for e in entries:
        search, matmul = min(times[e]), min(bare[e])
        rows_per_block = [_auto_chunk(size, e) for size in _widths(layout, groups)]
        table.append({
            "block_entries": e, "rows_per_block_median": int(np.median(rows_per_block)),
            "search_seconds": [round(t, 3) for t in times[e]], "bare_bf16_seconds": [round(t, 3) for t in bare[e]],
            "search_x_bare_bf16": round(search / matmul, 3), "peak_growth_mib": peaks[e],
        })  # fmt: skip
    return {
        "n": n, "data": data, "nprobe": nprobe, "groups": len(groups), "rows": int(sizes[groups].sum()),
        "products": products, "layout_seconds": round(layout_seconds, 1), "repeats": repeats,
        "same_answer": True, "machine": machine(), "table": table,
    }  # fmt: skip


def _widths(layout, groups) -> list[int]:
    row_groups, key_lists = layout.buckets()
    return [key_lists.size(row_groups.probed(int(g), layout.nprobe, key_lists, K)) for g in groups]


def markdown(report: dict) -> str:
    lines = [
        f"# Rows per bf16 block of the grouped IVF search, N = {report['n']:,} `{report['data']}`, nprobe {report['nprobe']}",
        "",
        "Machine: {platform}, CPU `{cpu}`, amx_bf16={amx_bf16}, avx512_bf16={avx512_bf16}, torch {torch}, "
        "{torch_threads} threads, load {load_average_1m}".format(**report["machine"]),
        "",
        f"{report['groups']} sampled groups, {report['rows']:,} rows, {report['products']:,} products; k = {K}; "
        f"best of {report['repeats']} interleaved repeats; same answer at every block size: {report['same_answer']}.",
        "",
        "| scores per block | rows per block (median group) | search s (each repeat) | bare bf16 matmul s | search × bare | peak growth MiB |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["table"]:
        lines.append(
            f"| {row['block_entries']:,} | {row['rows_per_block_median']} | {row['search_seconds']} | "
            f"{row['bare_bf16_seconds']} | {row['search_x_bare_bf16']} | {row['peak_growth_mib']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="lowdim", choices=sorted(DATA_KINDS))
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--nprobe", type=int, default=256)
    parser.add_argument("--groups", type=int, default=24)
    parser.add_argument("--entries", type=int, nargs="+", default=[1 << 26, 1 << 27, 1 << 28])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    report = run(args.n, args.data, args.nprobe, args.groups, args.entries, args.repeats)
    name = f"ivf_blocks_{args.n}" + (f"_{args.tag}" if args.tag else "")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
