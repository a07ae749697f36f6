"""Benchmark: per-rank memory and time of distributed info_nce / sigmoid_loss, gather vs ring (gloo, CPU).

For every world size W, W processes (torch.multiprocessing + gloo on this machine) each hold b queries and
n keys (n − b of them hard negatives) of dimension d, fp32, and run one loss fwd + bwd, in a fresh process
group per (loss, mode). Reported per rank (max over ranks): the peak RSS above the RSS before the call
(VmHWM, after a warm-up in the same mode; glibc's mmap threshold is fixed at 64 KiB so that freed tensors
leave the RSS) and the wall time. The gathered mode holds W·n·d keys + W·n·d fp32 key gradients per rank,
so its memory grows with W; the ring holds a constant number of key blocks. On one shared CPU machine the
processes compete for the cores: times are only comparable within one run (ring / gather ratio).

Usage: python benchmarks/bench_loss_distributed.py [--worlds 2,4,8] [--b 64] [--n 4096] [--dim 512] [--smoke]
Writes benchmarks/results/loss_distributed.json and .md (not with --smoke) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from hardbatch.machine import cpu_model

RESULTS = Path(__file__).parent / "results"
MODES = ("gather", "ring")
LOSSES = ("info_nce", "sigmoid")


def _peak_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not available (Linux only)")


def _worker(
    rank: int, world: int, init_file: str, cfg: dict, loss_name: str, mode: str, out_file: str
) -> None:
    """One fresh process per rank and (loss, mode): VmHWM is a high-water mark, it never goes back down."""
    import torch
    import torch.distributed as dist

    from hardbatch.losses import info_nce, sigmoid_loss

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    gen = torch.Generator().manual_seed(rank)
    b, n, d = cfg["b"], cfg["n"], cfg["dim"]
    q = torch.nn.functional.normalize(torch.randn(b, d, generator=gen), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=-1)

    def run(q_in, k_in):
        if loss_name == "info_nce":
            return info_nce(q_in, k_in, scale=20.0, group=dist.group.WORLD, distributed=mode)
        return sigmoid_loss(q_in, k_in, 10.0, -10.0, group=dist.group.WORLD, distributed=mode)

    warm_q, warm_k = q[:8].clone().requires_grad_(), k[:16].clone().requires_grad_()
    run(warm_q, warm_k).backward()
    qq, kk = q.clone().requires_grad_(), k.clone().requires_grad_()
    dist.barrier()
    base = _peak_mb()
    start = time.perf_counter()
    run(qq, kk).backward()
    row = {"seconds": time.perf_counter() - start, "extra_peak_mb": _peak_mb() - base}
    gathered: list = [None] * world
    dist.all_gather_object(gathered, row)
    if rank == 0:
        merged = {
            "loss": loss_name,
            "mode": mode,
            "world": world,
            "seconds": max(g["seconds"] for g in gathered),
            "extra_peak_mb": max(g["extra_peak_mb"] for g in gathered),
        }
        Path(out_file).write_text(json.dumps(merged))
    dist.destroy_process_group()


def main() -> None:
    import torch
    import torch.multiprocessing as mp

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", default="2,4,8")
    parser.add_argument("--b", type=int, default=64)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    cfg = {"b": 8, "n": 64, "dim": 16} if args.smoke else {"b": args.b, "n": args.n, "dim": args.dim}
    worlds = [2] if args.smoke else [int(w) for w in args.worlds.split(",")]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # A fixed mmap threshold makes glibc return every freed tensor above 64 KiB to the OS at once, so the RSS
    # high-water mark follows the live tensors instead of heap fragmentation (glibc's dynamic threshold
    # would otherwise serve later 8 MiB blocks from the heap and keep freed ones resident).
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    load_start = os.getloadavg()[0]
    rows = []
    for world in worlds:
        for loss_name in LOSSES:
            for mode in MODES:
                with tempfile.TemporaryDirectory() as tmp:
                    out = os.path.join(tmp, "row.json")
                    spawn_args = (world, os.path.join(tmp, "rdv"), cfg, loss_name, mode, out)
                    mp.spawn(_worker, args=spawn_args, nprocs=world, join=True)
                    rows.append(json.loads(Path(out).read_text()))
                    print(json.dumps(rows[-1]), flush=True)
    report = {
        "benchmark": "loss_distributed",
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_model(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "load_average_start": round(load_start, 2),
            "load_average_end": round(os.getloadavg()[0], 2),
        },
        "params": {**cfg, "worlds": worlds, "dtype": "float32", "backend": "gloo, 1 thread per rank"},
        "rows": rows,
    }
    table = _markdown(report)
    print(table)
    if not args.smoke:
        from hardbatch.io import atomic_write, write_json

        RESULTS.mkdir(parents=True, exist_ok=True)
        write_json(RESULTS / "loss_distributed.json", report)
        with atomic_write(RESULTS / "loss_distributed.md") as handle:
            handle.write(table)


def _markdown(report: dict) -> str:
    m, p = report["machine"], report["params"]
    lines = [
        "# Distributed losses per rank: gather vs ring (gloo on one CPU machine)",
        "",
        f"Machine: {m['processor']}, {m['cpus']} CPUs, torch {m['torch']}; load average {m['load_average_start']} "
        f"at start, {m['load_average_end']} at end (shared machine: compare within the table).",
        "",
        f"Per rank: b = {p['b']} queries, n = {p['n']} keys, d = {p['dim']}, fp32; one fwd + bwd; max over ranks. "
        f"One key block is n·d·4 B = {p['n'] * p['dim'] * 4 / 2**20:.1f} MiB.",
        "",
        "| loss | W | mode | seconds | extra peak RSS MiB | ring / gather memory |",
        "|---|---:|---|---:|---:|---:|",
    ]
    by_key = {(r["loss"], r["world"], r["mode"]): r for r in report["rows"]}
    for r in report["rows"]:
        ratio = ""
        if r["mode"] == "ring":
            gather = by_key[(r["loss"], r["world"], "gather")]
            ratio = f"{r['extra_peak_mb'] / max(gather['extra_peak_mb'], 0.1):.2f}"
        lines.append(
            f"| {r['loss']} | {r['world']} | {r['mode']} | {r['seconds']:.2f} | {r['extra_peak_mb']:.1f} | {ratio} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
