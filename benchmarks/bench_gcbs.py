"""Benchmark: one GCBS refresh (``hardbatch.mining.mine_gcbs``) per stage at N = 100k, d = 384.

Target: a refresh (everything but the embedding pass) in <= 60 s on 2 CPU cores.

Graph methods side by side in one run: ``exact`` (the chunked full similarity pass), ``ivf`` (faiss IVF
range search over ``nprobe`` of ~4·sqrt(N) lists, approximate) and ``ivf_torch`` (grouped IVF search at
matmul speed over ~sqrt(N) lists, ``nprobe`` calibrated to ``--recall-target``). For the IVF methods the edge
recall against the exact graph is reported (same threshold; IVF edges are a subset, so recall = nnz_ivf /
nnz_exact).

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
       [--target-degree D] [--methods exact,ivf,ivf_torch] [--nprobe P] [--recall-target 0.95]
Writes benchmarks/results/gcbs.json and gcbs.md and prints JSON and the table.

``--key-blocks N`` (issue 12, items 3 and 5) runs ``mine_gcbs`` on memory-mapped ``.npy`` inputs with all
positives resident, with ``key_block_size=B`` (default N/8) and with ``memory_budget`` (default 256MiB),
each in its own process after a bare fp32 N × N matmul process: seconds (and × the matmul), peak RSS
(``VmHWM``, which counts the pages of the memory-mapped inputs that were read), the peak anonymous memory
sampled every millisecond above the process's floor (what the stages allocate; file pages excluded), the
``threshold_working_set`` bound of the block used, and whether order, batches and threshold equal the
unblocked run. Writes benchmarks/results/gcbs_key_blocks_<N>.json and .md.
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
        keep_graph=False, graph_method=method, nprobe=args.nprobe, recall_target=args.recall_target,
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
        "graph_search": {k: v for k, v in s.get("graph_search", {}).items()},
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
        f"faiss IVF: nprobe {record['nprobe'] or 32} of ~4·sqrt(N) lists; ivf_torch: ~sqrt(N) lists, nprobe "
        f"{record['nprobe'] or 'calibrated to edge recall ' + str(record['recall_target'])}.",
        "",
        "| metric | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
        row("quantile estimation (s)", lambda r: r["seconds"]["quantile"]),
        row("threshold graph (s)", lambda r: r["seconds"]["threshold_graph"]),
        row("threshold graph / bare fp32 matmul",
            lambda r: f"{r['seconds']['threshold_graph'] / record['matmul_floor_seconds_est']:.3f}"),
        row("ivf_torch: nprobe / nlist, searched, precision", lambda r: _search_cell(r.get("graph_search"))),
        row("ivf_torch: calibrated edge recall (500 rows)",
            lambda r: (r.get("graph_search") or {}).get("calibrated_recall", "–")),
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


def _search_cell(info: dict | None) -> str:
    if not info:
        return "–"
    cell = f"{info['nprobe']} / {info['nlist']}, {100 * info['searched_fraction']:.2f} %, {info['precision']}"
    if "bf16_groups" in info:  # groups too narrow for bf16 run in fp32
        cell += f" ({info['bf16_groups']} groups in bf16)"
    return cell


def _anon_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def key_block_cell(spec: dict) -> dict:
    """Child process of ``--key-blocks``: one matmul or ``mine_gcbs`` run on memory-mapped inputs."""
    import threading

    import hardbatch.mining.gcbs as gcbs_module
    from hardbatch.graph.threshold import threshold_working_set
    from hardbatch.progress import peak_rss_mb

    torch.set_num_threads(spec["threads"])
    query = np.load(spec["query"], mmap_mode="r")
    positive = np.load(spec["positive"], mmap_mode="r")
    floor, peak, done = _anon_mb(), [0.0], threading.Event()
    stage: list = [None]  # [name] while one of the wrapped stage functions runs
    added: dict[str, float] = {}  # stage -> peak anonymous MiB above its entry level

    def watch() -> None:  # peak anonymous memory: RssAnon sampled, file-backed pages of the inputs excluded
        while not done.wait(0.001):
            now = _anon_mb()
            peak[0] = max(peak[0], now)
            if stage[0] is not None:
                name, entry = stage[0]
                added[name] = max(added.get(name, 0.0), now - entry)

    def timed(name: str, fn):
        def wrapper(*args, **kwargs):
            stage[0] = (name, _anon_mb())
            try:
                return fn(*args, **kwargs)
            finally:
                stage[0] = None

        return wrapper

    for name in (
        "normalize_rows",
        "estimate_similarity_quantile",
        "threshold_graph",
        "symmetrize",
        "rcm_order",
    ):
        setattr(gcbs_module, name, timed(name, getattr(gcbs_module, name)))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.perf_counter()
    out: dict = {}
    if spec["what"] == "matmul":
        q_t, p_t = torch.from_numpy(np.array(query)), torch.from_numpy(np.array(positive))
        for lo in range(0, len(q_t), 2048):
            q_t[lo : lo + 2048] @ p_t.T
    elif spec["what"] == "graph":  # the graph stage alone: no earlier stage's freed memory to reuse
        graph = gcbs_module.threshold_graph(
            query, positive, spec["threshold"], device="cpu", precision="fp32", drop_diagonal=True,
            key_block_size=spec.get("block"), memory_budget=spec.get("budget"), show_progress=False,
        )  # fmt: skip
        out = {"nnz_directed": int(graph.nnz), "graph_bytes": int(graph.data.nbytes + graph.indices.nbytes)}
    else:
        result = gcbs_module.mine_gcbs(
            query, positive, spec["batch_size"], target_degree=spec["target_degree"], device="cpu",
            precision="fp32", key_block_size=spec.get("block"), memory_budget=spec.get("budget"),
            hash_inputs=False, keep_graph=False, show_progress=False,
        )  # fmt: skip
        np.save(spec["out"] + "_order.npy", result.order)
        block = result.stats.get("key_block_size", len(positive))
        out = {
            "threshold": result.threshold,
            "nnz_directed": result.stats["nnz_directed"],
            "key_block_size": block,
            "key_blocks": result.stats.get("key_blocks", 1),
            "working_set_bound_mb": round(threshold_working_set(block, query.shape[1], 2048) / 2**20, 1),
            "stages": result.seconds,
        }
    seconds = time.perf_counter() - started
    done.set()
    watcher.join()
    return {
        **out,
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "anon_floor_mb": round(floor, 1),
        "anon_peak_above_floor_mb": round(peak[0] - floor, 1),
        "anon_added_by_stage_mb": {name: round(value, 1) for name, value in added.items()},
    }


def run_key_blocks(args: argparse.Namespace) -> dict:
    """Unblocked vs key-blocked vs budgeted ``mine_gcbs`` at one N, each run in its own process."""
    import sys
    import tempfile

    from _worker import run_worker

    num, block = args.key_blocks, args.key_block_size or max(1, args.key_blocks // 8)
    out: dict = {"n": num, "dim": args.dim, "threads": args.threads, "key_block_size": block,
                 "memory_budget": args.memory_budget, "target_degree": args.target_degree or 64.0}  # fmt: skip
    out["load_average_1m_start"] = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as folder:
        query, positive = clustered(num, args.dim)
        paths = {"query": os.path.join(folder, "q.npy"), "positive": os.path.join(folder, "p.npy")}
        np.save(paths["query"], query)
        np.save(paths["positive"], positive)
        del query, positive
        cells = {
            "matmul": {},
            "whole": {},
            "blocked": {"block": block},
            "budget": {"budget": args.memory_budget},
        }
        for name, extra in cells.items():
            spec = {**paths, "what": "matmul" if name == "matmul" else "mine", "threads": args.threads,
                    "batch_size": args.batch_size, "target_degree": out["target_degree"],
                    "out": os.path.join(folder, name), **extra}  # fmt: skip
            out[name] = run_worker([sys.executable, __file__, "--key-block-cell", json.dumps(spec)])
            print(name, out[name], file=sys.stderr, flush=True)
        threshold = out["whole"].get("threshold", 0.5)
        for name, extra in (("graph_whole", {}), ("graph_blocked", {"block": block}),
                            ("graph_budget", {"budget": args.memory_budget})):  # fmt: skip
            spec = {**paths, "what": "graph", "threads": args.threads, "threshold": threshold, **extra}
            out[name] = run_worker([sys.executable, __file__, "--key-block-cell", json.dumps(spec)])
            print(name, out[name], file=sys.stderr, flush=True)
        whole = np.load(os.path.join(folder, "whole_order.npy"))
        for name in ("blocked", "budget"):
            if "error" in out[name] or "error" in out["whole"]:
                continue
            out[name]["identical_to_unblocked"] = bool(
                np.array_equal(np.load(os.path.join(folder, f"{name}_order.npy")), whole)
                and out[name]["threshold"] == out["whole"]["threshold"]
                and out[name]["nnz_directed"] == out["whole"]["nnz_directed"]
            )
    out["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    return out


def key_blocks_markdown(report: dict) -> str:
    r, info = report["results"], report["machine"]
    mm = r["matmul"]["seconds"]
    lines = [
        f"# GCBS refresh over key blocks at N = {r['n']:,}, d = {r['dim']} "
        f"(`benchmarks/bench_gcbs.py --key-blocks {r['n']} --threads {r['threads']}`)",
        "",
        f"Machine: {info.get('cpu', '?')}, {r['threads']} torch thread(s), load average "
        f"{r['load_average_1m_start']} → {r['load_average_1m_end']}. fp32, target degree "
        f"{r['target_degree']:g}, chunk 2048, memory-mapped inputs; each row its own process. Bare fp32 "
        f"N × N matmul: {mm:.2f} s.",
        "",
        "| run | key block × blocks | seconds (× matmul) | graph stage s | peak RSS MiB | anon peak above "
        "floor MiB | graph stage adds MiB | working-set bound MiB | identical |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in ("whole", "blocked", "budget"):
        row = r[name]
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error']} | | | | | | | |")
            continue
        label = {"whole": "all positives resident", "blocked": "key_block_size",
                 "budget": f"memory_budget={r['memory_budget']}"}[name]  # fmt: skip
        lines.append(
            f"| {label} | {row['key_block_size']:,} × {row['key_blocks']} | {row['seconds']:.2f} "
            f"({row['seconds'] / mm:.2f}) | {row['stages']['threshold_graph']['seconds']:.2f} | "
            f"{row['peak_rss_mb']:.0f} | {row['anon_peak_above_floor_mb']:.0f} | "
            f"{row['anon_added_by_stage_mb'].get('threshold_graph', 0):.0f} | {row['working_set_bound_mb']:.0f} | "
            f"{row.get('identical_to_unblocked', '—')} |"
        )
    lines += [
        "",
        "The graph stage alone (`threshold_graph` at the whole run's threshold, own process: nothing freed by "
        "an earlier stage to reuse):",
        "",
        "| run | seconds | anon peak above floor MiB | working-set bound MiB | graph (CSR) MiB | edges |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, source in (("graph_whole", "whole"), ("graph_blocked", "blocked"), ("graph_budget", "budget")):
        row, bound = r[name], r[source].get("working_set_bound_mb", float("nan"))
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error']} | | | | |")
            continue
        lines.append(
            f"| {name} | {row['seconds']:.2f} | {row['anon_peak_above_floor_mb']:.0f} | {bound:.0f} | "
            f"{row['graph_bytes'] / 2**20:.1f} | {row['nnz_directed']:,} |"
        )
    return "\n".join(lines)


def main_key_blocks(args: argparse.Namespace) -> None:
    os.environ.setdefault("HARDBATCH_PROGRESS", "0")
    record = {"benchmark": "gcbs_key_blocks", "results": run_key_blocks(args), "machine": machine()}
    print(json.dumps(record, indent=2))
    table = key_blocks_markdown(record)
    print(table)
    out = RESULTS / f"gcbs_key_blocks_{args.key_blocks}"
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    out.with_suffix(".md").write_text(table + "\n")


def main() -> None:
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--key-block-cell":
        print(json.dumps(key_block_cell(json.loads(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--quantile", type=float, default=None)
    parser.add_argument("--target-degree", type=float, default=None)
    parser.add_argument("--methods", default="exact,ivf,ivf_torch", help="graph methods to run, side by side")
    parser.add_argument(
        "--nprobe", type=int, default=None, help="default: 32 for ivf, calibrated for ivf_torch"
    )
    parser.add_argument("--recall-target", type=float, default=0.95, help="edge recall of ivf_torch")
    parser.add_argument("-o", "--output", "--out", dest="out", default=str(RESULTS / "gcbs"))
    parser.add_argument("--key-blocks", type=int, metavar="N", help="unblocked vs key-blocked GCBS at this N")
    parser.add_argument("--key-block-size", type=int, default=None, help="with --key-blocks (default N/8)")
    parser.add_argument("--memory-budget", default="256MiB", help="with --key-blocks")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of --key-blocks runs")
    args = parser.parse_args()
    if args.key_blocks:
        main_key_blocks(args)
        return
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
        "recall_target": args.recall_target,
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
