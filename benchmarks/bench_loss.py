"""Benchmark: tiled InfoNCE/CLIP (hardbatch.losses.info_nce) vs a materialised loss vs sentence-transformers.

For every batch size b (n = b keys: the square in-batch case) and d = 384, each method computes the loss
and its gradients w.r.t. queries and keys (fwd + bwd) on unit-norm embeddings, scale 20, for every input
dtype of ``--dtypes`` (default fp32 and bf16, side by side in one run; the sentence-transformers peers run in
fp32 only):

* ``info_nce``        : symmetric CLIP loss, tiled (torch backend on CPU, Triton on CUDA).
* ``info_nce_rows``   : one direction (query → key), tiled: the same task as MNRL.
* ``reference``       : :func:`hardbatch.losses.reference_info_nce`, symmetric, full logit matrix + autograd.
* ``st_mnrl``         : sentence-transformers ``MultipleNegativesRankingLoss`` (query → doc).
* ``st_mnrl_sym``     : MNRL with ``directions=(query_to_doc, doc_to_query), partition_mode=per_direction``.

Each (method, b) runs in a fresh subprocess, so its peak RSS is its own; "extra peak MB" is the peak above
the RSS after the embeddings exist (the memory the loss needs). Time is the best of ``--reps`` fwd+bwd runs
after a warm-up on a 256-row slice. Throughput counts the **useful work 8·b·n·d FLOPs** for every method
(forward logits 2·b·n·d + backward recompute 2·b·n·d + two gradient matmuls 4·b·n·d, the work of the fused
design; a materialising method executes 6·b·n·d but pays O(b·n) memory), so GFLOP/s compares methods on
the same task and the ratio of GFLOP/s equals the inverse ratio of times. Naive methods are skipped where
their estimated memory (≈ 6 fp32 b × n matrices) exceeds ``--naive-max-gb``.

Time grows as O(b·n·d) for every method; memory O(b·n) for the materialising ones and O((b + n)·d + tile²)
for info_nce. With a CUDA device the script also times info_nce (Triton when installed) and the reference
on the GPU with CUDA events and ``max_memory_allocated``; without one it records why that part was skipped.

"bf16 speed-up" is time(fp32 inputs) / time(bf16 inputs) of the same method and b; with ``--repeats`` the
dtypes and methods alternate subprocess by subprocess and the best time of each cell counts. The machine record
includes the CPU model, its bf16 flags (``amx_bf16``, ``avx512_bf16``) and whether
:func:`hardbatch.device.fast_bf16_matmul` chose bf16 tiles.

Usage: python benchmarks/bench_loss.py [--sizes 1024,4096,16384] [--dim 384] [--reps 2] [--dtypes float32,bfloat16]
    [--methods info_nce,reference] [--smoke]
Writes benchmarks/results/loss_cpu.json and loss_cpu.md (not with --smoke) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from _worker import run_worker
from hardbatch.machine import cpu_model

RESULTS = Path(__file__).parent / "results"
METHODS = ("info_nce", "info_nce_rows", "reference", "st_mnrl", "st_mnrl_sym", "sigmoid", "sigmoid_reference")
NAIVE = {"reference", "st_mnrl", "st_mnrl_sym", "sigmoid_reference"}
SCALE = 20.0


def useful_flops(b: int, n: int, d: int) -> int:
    """The FLOP count used for every method's throughput: 8·b·n·d (fused fwd + bwd with one recompute)."""
    return 8 * b * n * d


def make_embeddings(b: int, d: int, seed: int = 0, dtype: str = "float32"):
    """Unit-norm keys; queries are noisy copies of their positives so the loss is not trivial."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    key = torch.nn.functional.normalize(torch.randn(b, d, generator=gen), dim=1)
    query = torch.nn.functional.normalize(key + 1.5 * torch.randn(b, d, generator=gen) / d**0.5, dim=1)
    return query.to(getattr(torch, dtype)), key.to(getattr(torch, dtype))


def build_method(method: str):
    """Return ``f(query, key) -> loss`` for a method name (imports happen here, outside the timing)."""
    from hardbatch.losses import info_nce, reference_info_nce, reference_sigmoid_loss, sigmoid_loss

    if method == "sigmoid":  # SigLIP's initial scale 10 and bias -10
        return lambda q, k: sigmoid_loss(q, k, 10.0, -10.0)
    if method == "sigmoid_reference":
        return lambda q, k: reference_sigmoid_loss(q, k, 10.0, -10.0)
    if method == "info_nce":
        return lambda q, k: info_nce(q, k, scale=SCALE, symmetric=True)
    if method == "info_nce_rows":
        return lambda q, k: info_nce(q, k, scale=SCALE, symmetric=False)
    if method == "reference":
        return lambda q, k: reference_info_nce(q, k, scale=SCALE, symmetric=True)
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    directions = ("query_to_doc", "doc_to_query") if method == "st_mnrl_sym" else ("query_to_doc",)
    # compute_loss_from_embeddings never touches the model, so a placeholder module is enough.
    import torch

    mnrl = MultipleNegativesRankingLoss(
        torch.nn.Identity(), scale=SCALE, directions=directions, partition_mode="per_direction"
    )
    return lambda q, k: mnrl.compute_loss_from_embeddings([q, k], None)


def peak_rss_mb() -> float:
    """This process's peak RSS in MiB: VmHWM on Linux (ru_maxrss inherits the parent's peak over fork + exec)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    from hardbatch.progress import peak_rss_mb as fallback

    return fallback()


def run_one(method: str, b: int, d: int, reps: int, threads: int, dtype: str = "float32") -> dict:
    """Child process: time fwd+bwd of one method at one size and report the extra peak RSS."""
    import torch

    torch.set_num_threads(threads)
    loss_fn = build_method(method)
    query, key = make_embeddings(b, d, dtype=dtype)
    warm_q, warm_k = query[:256].clone().requires_grad_(), key[:256].clone().requires_grad_()
    loss_fn(warm_q, warm_k).backward()
    base_mb = peak_rss_mb()
    best, value = float("inf"), None
    for _ in range(reps):
        q, k = query.clone().requires_grad_(), key.clone().requires_grad_()
        start = time.perf_counter()
        loss = loss_fn(q, k)
        loss.backward()
        best = min(best, time.perf_counter() - start)
        value = float(loss)
        del loss, q, k
    return {"seconds": best, "extra_peak_mb": peak_rss_mb() - base_mb, "loss": value}


def run_cuda(sizes: list[int], d: int, reps: int) -> dict:
    """CUDA part: info_nce (auto backend) vs reference, CUDA-event timing, peak allocated memory."""
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device in this run"}
    from hardbatch.losses import info_nce, reference_info_nce
    from hardbatch.losses.info_nce import resolve_backend

    device = torch.device("cuda")
    rows = []
    for b in sizes:
        query, key = (t.to(device=device, dtype=torch.bfloat16) for t in make_embeddings(b, d))
        for method in ("info_nce", "reference"):
            fn = info_nce if method == "info_nce" else reference_info_nce
            if method == "reference" and 6 * b * b * 4 > 0.5 * torch.cuda.mem_get_info()[0]:
                rows.append(
                    {"b": b, "method": method, "skipped": "estimated memory above half the free GPU memory"}
                )
                continue
            times = []
            for rep in range(reps + 1):
                q, k = query.clone().requires_grad_(), key.clone().requires_grad_()
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(q, k, scale=SCALE).backward()
                end.record()
                torch.cuda.synchronize()
                if rep > 0:  # the first run warms up (and autotunes the Triton kernels)
                    times.append(start.elapsed_time(end) / 1000)
            seconds = min(times)
            rows.append(
                {
                    "b": b,
                    "method": method,
                    "backend": resolve_backend(None, device, query)[0] if method == "info_nce" else "torch",
                    "seconds": seconds,
                    "extra_peak_mb": (torch.cuda.max_memory_allocated() - base) / 2**20,
                    "gflops": useful_flops(b, b, d) / seconds / 1e9,
                }
            )
    return {"device": torch.cuda.get_device_name(0), "dtype": "bfloat16", "rows": rows}


def _child(method: str, b: int, d: int, reps: int, threads: int, dtype: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, str(b), str(d), str(reps), str(threads), dtype]
    return run_worker(cmd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,4096,16384")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--naive-max-gb", type=float, default=3.0)
    parser.add_argument("--dtypes", default="float32,bfloat16", help="input dtypes, side by side")
    parser.add_argument(
        "--methods",
        default="info_nce,info_nce_rows,reference,st_mnrl,st_mnrl_sym",
        help=f"comma-separated, from {', '.join(METHODS)} (sigmoid rows: benchmarks/results/loss_cpu_sigmoid.md)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="interleaved runs per cell; best time counts")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, check the script, write nothing")
    parser.add_argument("--tag", default="", help="suffix of the result files (one per machine kind)")
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        method, b, d, reps, threads, dtype = args.worker
        print(json.dumps(run_one(method, int(b), int(d), int(reps), int(threads), dtype)))
        return
    sizes = [256, 512] if args.smoke else [int(s) for s in args.sizes.split(",")]
    dim = 32 if args.smoke else args.dim
    load_start = os.getloadavg()[0]
    rows = []
    for b in sizes:
        cells = {}
        for repeat in range(args.repeats):  # interleaved: a change of load hits fp32 and bf16 alike
            for method in args.methods.split(","):
                for dtype in args.dtypes.split(","):
                    if dtype != "float32" and method.startswith("st_"):
                        continue  # the peers' fp32 figures are the baseline; bf16 is about our tiles
                    row = cells.setdefault(
                        (method, dtype), {"b": b, "n": b, "d": dim, "method": method, "dtype": dtype}
                    )
                    naive_gb = 6 * b * b * 4 / 2**30
                    if method in NAIVE and naive_gb > args.naive_max_gb:
                        row["skipped"] = f"needs ≈{naive_gb:.1f} GB (> --naive-max-gb {args.naive_max_gb})"
                        continue
                    result = _child(method, b, dim, 1 if b >= 16384 else args.reps, args.threads, dtype)
                    print(json.dumps({**row, "repeat": repeat, **result}), flush=True)
                    if "seconds" in result and result["seconds"] < row.get("seconds", float("inf")):
                        row.update(result)
                        row["gflops"] = useful_flops(b, b, dim) / row["seconds"] / 1e9
                    elif "seconds" not in result and "seconds" not in row:
                        row.update(result)
        rows.extend(cells.values())
    _add_ratios(rows)
    import torch

    from hardbatch.device import cpu_flags, fast_bf16_matmul

    report = {
        "benchmark": "loss_cpu",
        "machine": {
            "cpu": cpu_model(),
            "bf16_flags": sorted((cpu_flags() or frozenset()) & {"amx_bf16", "amx_tile", "avx512_bf16"}),
            "bf16_tiles": fast_bf16_matmul("cpu"),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "load_average_start": round(load_start, 2),
            "load_average_end": round(os.getloadavg()[0], 2),
        },
        "params": {
            "sizes": sizes,
            "dim": dim,
            "reps": args.reps,
            "repeats": args.repeats,
            "scale": SCALE,
            "dtypes": args.dtypes,
        },
        "flop_count": "useful work 8·b·n·d per fwd+bwd for every method",
        "rows": rows,
        "cuda": run_cuda(sizes, dim, args.reps),
    }
    table = _markdown(report)
    print(table)
    if not args.smoke:
        from hardbatch.io import atomic_write, write_json

        RESULTS.mkdir(parents=True, exist_ok=True)
        stem = f"loss_cpu_{args.tag}" if args.tag else "loss_cpu"
        write_json(RESULTS / f"{stem}.json", report)
        with atomic_write(RESULTS / f"{stem}.md") as handle:
            handle.write(table)


def _add_ratios(rows: list[dict]) -> None:
    """time(peer) / time(info_nce) and memory(peer) / memory(info_nce); peers: symmetric vs info_nce, one-way vs rows.

    Also time(fp32) / time(this dtype) for the same method and b (the bf16 speed-up).
    """
    by_dtype = {(r["b"], r["method"], r.get("dtype", "float32")): r for r in rows}
    for row in rows:
        base = by_dtype.get((row["b"], row["method"], "float32"))
        if row.get("dtype", "float32") != "float32" and base and "seconds" in base and "seconds" in row:
            row["speedup_vs_fp32"] = base["seconds"] / row["seconds"]
    by_key = {(r["b"], r["method"], r.get("dtype", "float32")): r for r in rows}
    for row in rows:
        ours = by_key.get(
            (
                row["b"],
                {"st_mnrl": "info_nce_rows", "sigmoid_reference": "sigmoid"}.get(row["method"], "info_nce"),
                row.get("dtype", "float32"),
            )
        )
        if (
            row["method"].startswith("info_nce")
            or row["method"] == "sigmoid"
            or ours is None
            or "seconds" not in row
            or "seconds" not in ours
        ):
            continue
        row["time_vs_info_nce"] = row["seconds"] / ours["seconds"]
        row["memory_vs_info_nce"] = row["extra_peak_mb"] / max(ours["extra_peak_mb"], 1.0)


def _fmt(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# InfoNCE / CLIP loss on CPU: tiled info_nce vs materialised reference vs sentence-transformers MNRL",
        "",
        f"Machine: {m.get('cpu', '?')} ({m['platform']}), {m['cpus']} CPUs, bf16 flags "
        f"{m.get('bf16_flags')}, bf16 tiles chosen: {m.get('bf16_tiles')}; torch {m['torch']}, threads "
        f"{m['threads']}; load average {m['load_average_start']} at start, {m['load_average_end']} at end "
        "(shared machine: compare ratios).",
        "",
        "n = b keys, d = {d}, scale 20, fwd + bwd (gradients w.r.t. queries and keys). GFLOP/s counts the "
        "useful work 8·b·n·d for every method. Ratios: peer / info_nce (symmetric methods vs `info_nce`, "
        "one-way `st_mnrl` vs `info_nce_rows`, same dtype); > 1 means info_nce is faster / smaller. "
        "bf16 speed-up: time with fp32 inputs / time with bf16 inputs.".format(d=report["params"]["dim"]),
        "",
        "| b | method | dtype | seconds | GFLOP/s | extra peak RSS MB | time ratio | memory ratio | bf16 speed-up | loss |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        dtype = r.get("dtype", "float32")
        if "seconds" not in r:
            reason = r.get("skipped") or r.get("error", "")
            lines.append(f"| {r['b']:,} | {r['method']} | {dtype} | skipped: {reason} | | | | | | |")
            continue
        lines.append(
            f"| {r['b']:,} | {r['method']} | {dtype} | {r['seconds']:.3f} | {r['gflops']:.1f} | "
            f"{r['extra_peak_mb']:.1f} | {_fmt(r.get('time_vs_info_nce'), 2)} | "
            f"{_fmt(r.get('memory_vs_info_nce'), 1)} | {_fmt(r.get('speedup_vs_fp32'), 2)} | {r['loss']:.4f} |"
        )
    cuda = report["cuda"]
    lines += ["", "## CUDA", ""]
    if "skipped" in cuda:
        lines.append(f"Skipped: {cuda['skipped']}.")
    else:
        lines += [
            f"Device: {cuda['device']}, {cuda['dtype']}.",
            "",
            "| b | method | backend | seconds | GFLOP/s | extra peak MB |",
            "|---:|---|---|---:|---:|---:|",
        ]
        for r in cuda["rows"]:
            if "skipped" in r:
                lines.append(f"| {r['b']:,} | {r['method']} | skipped: {r['skipped']} | | | |")
            else:
                lines.append(
                    f"| {r['b']:,} | {r['method']} | {r['backend']} | {r['seconds']:.4f} | {r['gflops']:.0f} | "
                    f"{r['extra_peak_mb']:.1f} |"
                )
    lines += [
        "",
        "Time grows as O(b·n·d) for every method. Memory: O(b·n) for the materialising methods (reference, MNRL), "
        "O((b + n)·d + tile²) for info_nce (1024 × 1024 fp32 tiles on CPU).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
