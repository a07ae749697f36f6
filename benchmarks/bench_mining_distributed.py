"""Benchmark: B3 and GCBS mining over W gloo ranks (``hardbatch.mining.distributed``) against one process.

Issue 12's "2- and 4-rank gloo mining at 200k (same plan, seconds per rank)". Synthetic clustered unit
vectors (``bench_b3.clustered``: N/50 topics, d = 384) are written once as ``.npy`` files; for every world
size W (1 = the plain single-process ``mine_b3`` / ``mine_gcbs``), W processes (torch.multiprocessing, gloo,
file rendezvous) memory-map them and call ``mine_b3_distributed`` (exact fp32, the B3 defaults of
``bench_b3``) and then ``mine_gcbs_distributed`` (target degree = batch / 2), each in a fresh process group.
Reported per rank: wall seconds of the call (rank 0 also builds the graph, partitions and batches; the other
ranks' time includes waiting for it) and peak RSS (VmHWM); for rank 0 the plan's kNN / graph stage time.
Each plan is compared with the W = 1 plan: B3 clusters and remainder, GCBS batches, element for element.
``--methods b3_ivf`` mines with ``knn="ivf_torch"`` (the ranks build the IVF layout together, the groups
are dealt to the ranks; "read" only) and also reports nprobe, the searched fraction, the window recall against exact and
the products each rank searched and the seconds each rank spent building the IVF layout (set-up);
``--methods gcbs_ivf`` the same for GCBS's ``graph_method="ivf_torch"`` (nprobe, searched fraction, the
calibration's edge recall, each rank's products). ``--exchanges read,ring`` runs every W > 1 both ways side by side: every rank reading all positives from the
memory-mapped file ("read"), or each rank reading only its shard while the shards circulate ("ring",
``exchange="ring"``).

On one machine the ranks share its cores, so a W-rank run cannot be faster than W = 1 with all threads:
threads per rank are ``cores // W`` (at least 1) and the figure to read is the overhead of the
distribution (total rank-seconds against the single process), not a speed-up. On W machines each rank's
ranking time is the single-process one divided by W.

Time per rank O(N²·d / W) for the ranking; memory per rank O(N·d) for the memory-mapped positives (shared
page cache on one machine) + O(chunk·N) per block with "read", O(2·N/W·d) for two shards with "ring";
rank 0 also O(N·k) for the gathered window.

Usage: python benchmarks/bench_mining_distributed.py [--n 200000] [--worlds 1,2,4] [--exchanges read,ring]
[--methods b3,gcbs,b3_ivf,gcbs_ivf] [--data clustered|lowdim]
[--tag T] [--smoke]
Writes benchmarks/results/mining_distributed_<N>[_<T>].json and .md (not with --smoke) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench_b3 import BATCH, DIM, SKIP, WINDOW, K, _status_mb, machine, write_clustered

RESULTS = Path(__file__).parent / "results"
METHODS = ("b3", "gcbs", "b3_ivf", "gcbs_ivf")


def _mine(method: str, query, positive, distributed: bool, exchange: str = "read"):
    """One B3 plan or GCBS result; the distributed entry points on every rank when ``distributed``."""
    from hardbatch.mining import mine_b3, mine_gcbs
    from hardbatch.mining.distributed import mine_b3_distributed, mine_gcbs_distributed

    if method in ("b3", "b3_ivf"):
        options = dict(batch_size=BATCH, cluster_size=K, skip=SKIP, window=WINDOW, device="cpu",
                       precision="fp32", show_progress=False)  # fmt: skip
        if method == "b3_ivf":  # the grouped IVF, nprobe calibrated to window recall 0.95, bf16 where fast
            options.update(knn="ivf_torch", precision="auto")
        if distributed:
            return mine_b3_distributed(query, positive, exchange=exchange, **options)
        return mine_b3(query, positive, **options)
    options = dict(target_degree=BATCH / 2, device="cpu", keep_graph=False, show_progress=False)
    if method == "gcbs_ivf":  # the grouped IVF threshold graph, nprobe calibrated to edge recall 0.95
        options.update(graph_method="ivf_torch")
    if distributed:
        return mine_gcbs_distributed(query, positive, BATCH, exchange=exchange, **options)
    return mine_gcbs(query, positive, BATCH, **options)


def _stage_peaks(stages: dict) -> dict[str, float]:
    """Rank 0's peak RSS (VmHWM) at the end of each stage: the stage where it rises holds the peak."""
    return {name: stage["peak_rss_mb"] for name, stage in stages.items() if isinstance(stage, dict)}


def _save(method: str, result, stem: str) -> dict:
    """Rank 0's answer on disk (for the comparison with W = 1) and its stage times."""
    import numpy as np

    if method in ("b3", "b3_ivf"):
        np.save(stem + "_clusters.npy", result.clusters)
        np.save(stem + "_remainder.npy", result.remainder)
        stages = result.stats["stages"]
        row = {"knn_s": stages["knn"]["seconds"], "total_s": result.stats["total_seconds"],
               "stages_peak_rss_mb": _stage_peaks(stages)}  # fmt: skip
        if method == "b3_ivf":
            info = result.stats["knn_info"]
            row.update(window_recall=result.stats.get("knn_window_recall"), nprobe=info["nprobe"],
                       nlist=info["nlist"], searched_fraction=info["searched_fraction"],
                       precision=info["precision"], rank_products=info.get("rank_products"))  # fmt: skip
        return row
    np.save(stem + "_batches.npy", np.concatenate(result.batches))
    graph_s = {name: stage["seconds"] for name, stage in result.seconds.items() if isinstance(stage, dict)}
    row = {
        "stages_s": graph_s,
        "edges": result.stats.get("edges"),
        "stages_peak_rss_mb": _stage_peaks(result.seconds),
    }
    info = result.stats.get("graph_search")
    if info:
        row.update(nprobe=info["nprobe"], nlist=info["nlist"], searched_fraction=info["searched_fraction"],
                   calibrated_recall=info.get("calibrated_recall"), precision=info["precision"],
                   rank_products=info.get("rank_products"))  # fmt: skip
    return row


def _time_ivf_setup() -> dict[str, float]:
    """Seconds this rank spends building IVF layouts (k-means, assignment, calibration), summed."""
    import hardbatch.graph.ivf as ivf
    import hardbatch.mining.distributed as distributed

    spent = {"seconds": 0.0}
    build = ivf.ivf_layout

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return build(*args, **kwargs)
        finally:
            spent["seconds"] += time.perf_counter() - started

    ivf.ivf_layout = distributed.ivf_layout = timed  # one process (knn_ivf) and the ranks
    return spent


def _worker(rank: int, world: int, spec: dict) -> None:
    import numpy as np
    import torch
    import torch.distributed as dist

    from hardbatch.progress import peak_rss_mb

    torch.set_num_threads(spec["threads"])
    setup = _time_ivf_setup()
    distributed = world > 1
    if distributed:
        dist.init_process_group("gloo", init_method=f"file://{spec['rdv']}", rank=rank, world_size=world)
    query = np.load(spec["query"], mmap_mode="r")
    positive = np.load(spec["positive"], mmap_mode="r")
    if distributed:
        dist.barrier()
    started = time.perf_counter()
    result = _mine(spec["method"], query, positive, distributed, spec["exchange"])
    row = {
        "rank": rank,
        "seconds": round(time.perf_counter() - started, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        # Pages of the memory-mapped inputs this rank read count in RSS (file-backed, reclaimable).
        "rss_file_end_mb": _status_mb("RssFile"),
        "rss_anon_end_mb": _status_mb("RssAnon"),
    }
    if spec["method"] == "b3_ivf":
        row["ivf_setup_s"] = round(setup["seconds"], 2)
    if rank == 0:
        row.update(_save(spec["method"], result, spec["stem"]))
    rows = [row]
    if distributed:
        rows = [None] * world
        dist.all_gather_object(rows, row)
        dist.destroy_process_group()
    if rank == 0:
        Path(spec["stem"] + ".json").write_text(json.dumps(rows))


def _same(method: str, stem: str, reference: str) -> bool:
    import numpy as np

    parts = ("batches",) if method.startswith("gcbs") else ("clusters", "remainder")
    return all(
        np.array_equal(np.load(f"{stem}_{part}.npy"), np.load(f"{reference}_{part}.npy")) for part in parts
    )


def run(
    num: int,
    worlds: list[int],
    exchanges: list[str],
    methods: tuple[str, ...] = METHODS,
    data: str = "clustered",
) -> dict:
    import torch.multiprocessing as mp

    cores = os.cpu_count() or 1
    out: dict = {
        "n": num,
        "dim": DIM,
        "worlds": worlds,
        "exchanges": exchanges,
        "data": data,
        "load_average_1m_start": round(os.getloadavg()[0], 2),
    }
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("HARDBATCH_BENCH_TMP")) as folder:
        paths = write_clustered(num, folder, data)
        for method in methods:
            reference = None
            ways = ["read"] if method.endswith("_ivf") else exchanges  # an IVF group probes all positives
            for world, exchange in [(w, e) for w in worlds for e in (ways if w > 1 else ["-"])]:
                stem = os.path.join(folder, f"{method}_w{world}_{exchange}")
                spec = {**paths, "method": method, "stem": stem, "rdv": stem + ".rdv",
                        "threads": max(1, cores // world), "exchange": exchange}  # fmt: skip
                started = time.perf_counter()
                if world == 1:
                    _worker(0, 1, spec)
                else:
                    mp.spawn(_worker, args=(world, spec), nprocs=world, join=True)
                ranks = json.loads(Path(stem + ".json").read_text())
                reference = reference or stem
                row = {
                    "method": method,
                    "world": world,
                    "exchange": exchange,
                    "threads_per_rank": spec["threads"],
                    "wall_s": round(time.perf_counter() - started, 2),
                    "ranks": ranks,
                    "same_as_world_1": _same(method, stem, reference),
                }
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    out["rows"] = rows
    out["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    return out


def _file_pages_note(ranks: list[dict]) -> str:
    """Each rank's file-backed / anonymous RSS at the end (absent from results made before it was recorded)."""
    if ranks[0].get("rss_file_end_mb") is None:
        return ""
    shares = ", ".join(f"{x.get('rss_file_end_mb')} / {x.get('rss_anon_end_mb')}" for x in ranks)
    return f"; RssFile / RssAnon MiB at the end, per rank: {shares}"


def markdown(report: dict) -> str:
    r, info = report["results"], report["machine"]
    lines = [
        f"# Distributed mining at N = {r['n']:,}, d = {DIM}, `{r.get('data', 'clustered')}` data "
        "(`benchmarks/bench_mining_distributed.py`)",
        "",
        f"Machine: {info['platform']}, CPU `{info.get('cpu_model')}`, {info['cpus']} CPUs; gloo ranks on this "
        f"one machine (threads per rank = cores / W); load average {r['load_average_1m_start']} → "
        f"{r['load_average_1m_end']}. The ranks share the cores: read the overhead, not a speed-up.",
        "",
        "| method | W | exchange | threads/rank | wall s | seconds per rank | peak RSS MiB per rank | "
        "rank 0 kNN s | same plan as W = 1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        ranks = row["ranks"]
        lines.append(
            f"| {row['method']} | {row['world']} | {row.get('exchange', 'read')} | {row['threads_per_rank']} | "
            f"{row['wall_s']} | "
            f"{', '.join(str(x['seconds']) for x in ranks)} | {', '.join(str(x['peak_rss_mb']) for x in ranks)} | "
            f"{ranks[0].get('knn_s', '')} | {row['same_as_world_1']} |"
        )
    peaks = [row for row in r["rows"] if row["ranks"][0].get("stages_peak_rss_mb")]
    if peaks:
        lines += [
            "",
            "Rank 0's peak RSS (MiB) at the end of each stage (the stage where it rises holds the peak):",
            "",
        ]
        lines += [
            f"- {row['method']} W = {row['world']} {row.get('exchange', 'read')}: {row['ranks'][0]['stages_peak_rss_mb']}"
            + _file_pages_note(row["ranks"])
            for row in peaks
        ]
    ivf = [row for row in r["rows"] if row["method"] == "b3_ivf"]
    if ivf:
        lines += ["", "| b3_ivf W | nlist | nprobe | searched | precision | window recall | products per rank | "
                  "IVF set-up s per rank |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for row in ivf:
            head = row["ranks"][0]
            setup = ", ".join(str(x.get("ivf_setup_s", "-")) for x in row["ranks"])
            lines.append(
                f"| {row['world']} | {head['nlist']} | {head['nprobe']} | {head['searched_fraction']} | "
                f"{head['precision']} | {head['window_recall']} | {head.get('rank_products') or '-'} | {setup} |"
            )
    graph_ivf = [row for row in r["rows"] if row["method"] == "gcbs_ivf"]
    if graph_ivf:
        lines += ["", "| gcbs_ivf W | nlist | nprobe | searched | precision | calibrated edge recall | threshold graph s "
                  "(rank 0) | products per rank |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for row in graph_ivf:
            head = row["ranks"][0]
            lines.append(
                f"| {row['world']} | {head['nlist']} | {head['nprobe']} | {head['searched_fraction']} | "
                f"{head['precision']} | {head['calibrated_recall']} | {head['stages_s'].get('threshold_graph')} | "
                f"{head.get('rank_products') or '-'} |"
            )
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--worlds", default="1,2,4")
    parser.add_argument("--exchanges", default="read", help="read, ring or both (read,ring) for every W > 1")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument(
        "--methods",
        default="b3,gcbs",
        help="comma-separated: b3 (exact), gcbs, b3_ivf (knn='ivf_torch'), gcbs_ivf (graph_method='ivf_torch'); "
        "the IVF ones read only",
    )
    parser.add_argument(
        "--data",
        default="clustered",
        choices=("clustered", "lowdim"),
        help="bench_b3's synthetic kind (lowdim: where a grouped IVF reaches its recall target)",
    )
    parser.add_argument("--smoke", action="store_true", help="N = 3,000, W = 1, 2; nothing written")
    args = parser.parse_args()
    exchanges = args.exchanges.split(",")
    os.environ.setdefault("HARDBATCH_PROGRESS", "0")
    num, worlds = (3000, [1, 2]) if args.smoke else (args.n, [int(w) for w in args.worlds.split(",")])
    if worlds[0] != 1:
        raise SystemExit("--worlds must start with 1 (the reference plan)")
    report = {
        "benchmark": "mining_distributed",
        "machine": machine(),
        "results": run(num, worlds, exchanges, tuple(args.methods.split(",")), args.data),
    }
    table = markdown(report)
    print(table)
    if not args.smoke:
        from hardbatch.io import atomic_write, write_json

        stem = f"mining_distributed_{num}" + (f"_{args.tag}" if args.tag else "")
        write_json(RESULTS / f"{stem}.json", report)
        with atomic_write(RESULTS / f"{stem}.md") as handle:
            handle.write(table)


if __name__ == "__main__":
    main()
