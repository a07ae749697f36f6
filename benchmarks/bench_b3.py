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

``--scale N`` (issue 12) instead runs, in one process so every row shares the machine's load: the bare fp32
N × N matmul (blocks of 4,096 rows, results discarded), ``mine_b3`` exact in fp32 and in bf16 (bf16
pre-selection + fp32 re-scoring) and with the previous selection (``torch.topk`` + full tie scan), each with
its window agreement against float64 ranks on 300 sampled rows; ``mine_b3`` with ``knn="ivf"`` calibrated to
window recall 0.95; hierarchical vs flat B3; the GCBS threshold graph in both precisions. Writes
benchmarks/results/b3_scale_<N>.json and .md.

``--key-blocks N`` (issue 12, items 3 and 5) compares the exact kNN and ``mine_b3`` with all positives
resident against ``key_block_size=B`` (default N/8), both reading memory-mapped ``.npy`` inputs, each run in
its own process (its own peak RSS, ``VmHWM``), with a bare fp32 N × N matmul process at the start, middle and
end for the time ratios; it checks that the blocked answers equal the unblocked ones (indices and scores
bit for bit, same clusters). Writes benchmarks/results/b3_key_blocks_<N>_threads<T>.json and .md.
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


def low_dimensional(num: int, dim: int = DIM, latent: int = 32, seed: int = 0):
    """(query, positive) unit vectors with the low intrinsic dimension of real embeddings.

    ``num/500`` topic centres in a ``latent``-dimensional space, each example a centre plus latent noise,
    mapped to ``dim`` by one random linear map, then query and positive get independent isotropic noise
    (mean query·positive ≈ 0.73; MiniLM on codesearch: 0.55). Unlike :func:`clustered`, whose topics are
    mutually orthogonal so that ranks past a topic's 50 members are noise, similarity here decays smoothly
    with distance, as it does between real texts; which of the two an IVF search sees on real teacher
    embeddings is measured by ``--large ... --data`` on both (docs/b3.md).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, num // 500), latent), dtype=np.float32)
    codes = centres[rng.integers(0, len(centres), num)]
    codes += np.float32(0.7) * rng.standard_normal((num, latent), dtype=np.float32)
    base = codes @ (rng.standard_normal((latent, dim), dtype=np.float32) / np.float32(np.sqrt(latent)))
    scale = np.float32(0.6 * np.linalg.norm(base, axis=1).mean() / np.sqrt(dim))
    del codes

    def sample():
        x = base + scale * rng.standard_normal((num, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    return sample(), sample()


DATA_KINDS = {"clustered": clustered, "lowdim": low_dimensional}
DATA_NOTES = {
    "clustered": "`clustered`: N/50 mutually orthogonal topics of ~50 examples (ranks past 50 are noise).",
    "lowdim": "`lowdim`: N/500 topics in a 32-d latent space mapped to 384-d, isotropic noise on top.",
}


def write_clustered(num: int, folder: str, kind: str = "clustered") -> dict[str, str]:
    """:data:`DATA_KINDS` data saved as ``folder/q.npy`` and ``folder/p.npy`` (for cells that memory-map it)."""
    import numpy as np

    query, positive = DATA_KINDS[kind](num)
    paths = {"query": os.path.join(folder, "q.npy"), "positive": os.path.join(folder, "p.npy")}
    np.save(paths["query"], query)
    np.save(paths["positive"], positive)
    return paths


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
    info = describe_machine(packages=("faiss", "pymetis"))
    info.update(
        cpu_model=info["cpu"],
        amx_bf16="amx_bf16" in info["cpu_flags"],
        avx512_bf16="avx512_bf16" in info["cpu_flags"],
        note="wall-clock; other jobs may share the machine, compare rows of one run only",
    )
    return info


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


def _float64_window(query, positive, rows, k):
    import numpy as np

    sims = query[rows].astype(np.float64) @ positive.T.astype(np.float64)
    sims[np.arange(len(rows)), rows] = -np.inf
    return np.stack([np.lexsort((np.arange(len(r)), -r))[:k] for r in sims])


def run_scale(num: int, threads: int, skip_bf16: bool = False, exact_only: bool = False) -> dict:
    """All issue-12 comparisons at one N, in one process (shared load), ratios to the bare matmul."""
    import numpy as np
    import torch

    import hardbatch.graph.knn as knn_module
    from hardbatch.graph.threshold import estimate_similarity_quantile, threshold_graph
    from hardbatch.graph.topk import _topk_with_ties_slow
    from hardbatch.mining import cluster_hardness, mine_b3
    from hardbatch.mining.b3 import effective_window
    from hardbatch.mining.hierarchical import mine_b3_hierarchical
    from hardbatch.progress import peak_rss_mb

    torch.set_num_threads(threads)
    query, positive = clustered(num)
    sample = np.sort(np.random.default_rng(5).choice(num, 300, replace=False))
    reference = _float64_window(query, positive, sample, SKIP + WINDOW)
    q_t, p_t = torch.from_numpy(query), torch.from_numpy(positive)
    out: dict = {"n": num, "load_average_1m_start": round(os.getloadavg()[0], 2)}

    chunk = knn_module._auto_chunk(num)  # the exact search's own row blocks
    reused = torch.empty(chunk, num)

    def bare_matmul() -> float:
        # Into one reused output: a fresh block per chunk would add first-touch page faults to the
        # reference (measured up to 0.4 s per 256 MiB block here), flattering every ratio to it.
        started = time.perf_counter()
        for lo in range(0, num, chunk):
            rows = q_t[lo : lo + chunk]
            torch.matmul(rows, p_t.T, out=reused[: len(rows)])
        return time.perf_counter() - started

    def fresh_matmul() -> float:  # the reference of earlier runs: a fresh 4,096-row output per block
        started = time.perf_counter()
        for lo in range(0, num, 4096):
            q_t[lo : lo + 4096] @ p_t.T
        return time.perf_counter() - started

    def bare_bf16_matmul() -> float:  # what the bf16 path's score blocks cost alone (bf16 output)
        q16, p16 = q_t.bfloat16(), p_t.bfloat16()
        out16 = torch.empty(chunk, num, dtype=torch.bfloat16)
        started = time.perf_counter()
        for lo in range(0, num, chunk):
            rows = q16[lo : lo + chunk]
            torch.matmul(rows, p16.T, out=out16[: len(rows)])
        return time.perf_counter() - started

    out["bare_fp32_matmul_fresh_output_s"] = round(fresh_matmul(), 2)
    out["bare_fp32_matmul_s"] = round(bare_matmul(), 2)
    if not skip_bf16:
        out["bare_bf16_matmul_s"] = round(bare_bf16_matmul(), 2)
    common = dict(
        batch_size=BATCH, cluster_size=K, skip=SKIP, window=WINDOW, device="cpu", show_progress=False
    )

    def mine(name: str, **options) -> dict:
        # A bare matmul right before each run: the load of a shared machine drifts within minutes.
        before = bare_matmul()
        started = time.perf_counter()
        plan = mine_b3(query, positive, **common, **options)
        total = time.perf_counter() - started
        row = {
            "total_s": round(total, 2),
            "knn_s": plan.stats["stages"]["knn"]["seconds"],
            "stages_s": {name: stage["seconds"] for name, stage in plan.stats["stages"].items()},
            "bare_matmul_before_s": round(before, 2),
            "ratio_to_matmul": round(total / before, 3),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "knn_info": plan.stats.get("knn_info"),
            "knn_window_recall": plan.stats.get("knn_window_recall"),
            "knn_window_hardness": plan.stats.get("knn_window_hardness"),
            "within_edge_fraction": plan.stats["partition"]["within_edge_fraction"],
            "cluster_mean_sim": round(plan.stats["hardness"]["cluster_mean_sim"], 4),
        }
        if plan.window is not None:  # the plan's own window rows (sets) against float64 ranks
            windows = [plan.window[[int(i)]].indices for i in sample]
            # The plan's window over the other examples (the paper counts the example itself as rank 0).
            lo, width = effective_window(SKIP, WINDOW, bool(plan.params.get("count_self", False)))
            hi = lo + width
            row["window_agreement_float64"] = float(
                np.mean(
                    [
                        len(set(w.tolist()) & set(ref[lo:hi].tolist())) / width
                        for w, ref in zip(windows, reference)
                    ]
                )
            )
        out[name] = row
        print(name, row, file=sys.stderr, flush=True)
        return row, plan

    _, flat = mine("exact_fp32", precision="fp32")
    if not skip_bf16:
        mine("exact_bf16", precision="bf16")
    original = knn_module.select_topk
    knn_module.select_topk = _topk_with_ties_slow  # the selection before issue 12
    try:
        mine("exact_fp32_previous_selection", precision="fp32")
    finally:
        knn_module.select_topk = original
    out["bare_fp32_matmul_s_again"] = round(bare_matmul(), 2)
    if exact_only:
        out["load_average_1m_end"] = round(os.getloadavg()[0], 2)
        return out
    mine("ivf_recall_0.95", knn="ivf", recall_target=0.95)
    started = time.perf_counter()
    hier = mine_b3_hierarchical(
        query, positive, batch_size=BATCH, cluster_size=K, shard_size=max(K, num // 4), skip=SKIP,
        window=WINDOW, device="cpu", precision="fp32",
    )  # fmt: skip
    graph = flat.neighbors

    def within(clusters) -> float:
        owner = np.full(num, -1)
        for index, members in enumerate(clusters):
            owner[members] = index
        rows, cols = graph.nonzero()
        return float((owner[rows] == owner[cols]).mean()) if len(rows) else 0.0

    out["hierarchical_4_shards"] = {
        "total_s": round(time.perf_counter() - started, 2),
        "within_flat_graph_edge_fraction": within(hier.clusters),
        "flat_within_flat_graph_edge_fraction": within(flat.clusters),
        "cluster_mean_sim": round(cluster_hardness(query, positive, hier.clusters), 4),
        "flat_cluster_mean_sim": round(cluster_hardness(query, positive, flat.clusters), 4),
    }
    print("hierarchical", out["hierarchical_4_shards"], file=sys.stderr, flush=True)
    threshold = estimate_similarity_quantile(query, positive, 1 - 64 / num, device="cpu")
    graphs = {}
    for precision in ("fp32",) if skip_bf16 else ("fp32", "bf16"):
        started = time.perf_counter()
        graphs[precision] = threshold_graph(
            query, positive, threshold, device="cpu", drop_diagonal=True, precision=precision
        )
        out[f"gcbs_threshold_graph_{precision}_s"] = round(time.perf_counter() - started, 2)
    # Both are fp32 answers; entries within an fp32 rounding (~1e-7) of the threshold may differ.
    out["gcbs_edges"] = int(graphs["fp32"].nnz)
    if "bf16" in graphs:
        differ = (graphs["fp32"] != graphs["bf16"]).tocoo()
        out["gcbs_edges_differing"] = int(differ.nnz)
        if differ.nnz:  # how far from the threshold those entries are, in float64
            qn = query / np.linalg.norm(query, axis=1, keepdims=True)
            pn = positive / np.linalg.norm(positive, axis=1, keepdims=True)
            exact = np.einsum(
                "ij,ij->i", qn[differ.row].astype(np.float64), pn[differ.col].astype(np.float64)
            )
            out["gcbs_differing_max_abs_from_threshold"] = float(np.abs(exact - threshold).max())
    out["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    return out


def _status_mb(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (current value) in MiB, None where unavailable."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def key_block_cell(spec: dict) -> dict:
    """Child process of ``--key-blocks``: one matmul, kNN or mine_b3 run on memory-mapped inputs."""
    import numpy as np
    import torch

    from hardbatch.graph.knn import knn_exact
    from hardbatch.mining import mine_b3
    from hardbatch.progress import peak_rss_mb

    torch.set_num_threads(spec["threads"])
    query = np.load(spec["query"], mmap_mode="r")
    positive = np.load(spec["positive"], mmap_mode="r")
    floor = peak_rss_mb()
    started = time.perf_counter()
    what = spec["what"]
    if what == "matmul":
        q_t, p_t = torch.from_numpy(np.array(query)), torch.from_numpy(np.array(positive))
        for lo in range(0, len(q_t), 4096):
            q_t[lo : lo + 4096] @ p_t.T
    elif what == "knn":
        result = knn_exact(
            query, positive, SKIP + WINDOW, exclude_self=True, normalize=True, precision="fp32", device="cpu",
            chunk_size=spec.get("chunk"), key_block_size=spec.get("block"), show_progress=False,
        )  # fmt: skip
        np.save(spec["out"] + "_indices.npy", result.indices)
        np.save(spec["out"] + "_scores.npy", result.scores)
    else:
        plan = mine_b3(
            query, positive, batch_size=BATCH, cluster_size=K, skip=SKIP, window=WINDOW, device="cpu",
            precision="fp32", chunk_size=spec.get("chunk"), key_block_size=spec.get("block"),
            show_progress=False,
        )  # fmt: skip
        np.save(spec["out"] + "_clusters.npy", plan.clusters)
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_after_imports_and_mmap_mb": round(floor, 1),
        # Pages of the memory-mapped inputs that were read count in RSS (file-backed, reclaimable).
        "rss_file_end_mb": _status_mb("RssFile"),
        "rss_anon_end_mb": _status_mb("RssAnon"),
    }


def run_key_blocks(num: int, threads: int, block: int | None) -> dict:
    """Unblocked vs key-blocked exact kNN and mine_b3 at one N, each run in its own process."""
    import tempfile

    import numpy as np

    from _worker import run_worker

    block = block or max(1, num // 8)
    out: dict = {"n": num, "dim": DIM, "key_block_size": block, "threads": threads}
    out["load_average_1m_start"] = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as folder:
        paths = write_clustered(num, folder)

        def cell(name: str, what: str, **spec) -> dict:
            spec = {**paths, "what": what, "threads": threads, "out": os.path.join(folder, name), **spec}
            row = run_worker([sys.executable, __file__, "--key-block-cell", json.dumps(spec)])
            row.update({k: v for k, v in spec.items() if k in ("chunk", "block")})
            out[name] = row
            print(name, row, file=sys.stderr, flush=True)
            return row

        cell("matmul_start", "matmul")
        cell("knn_whole", "knn")
        cell("knn_blocked", "knn", block=block)
        cell("knn_whole_chunk1024", "knn", chunk=1024)
        cell("knn_blocked_chunk1024", "knn", chunk=1024, block=block)
        cell("matmul_middle", "matmul")
        cell("mine_whole", "mine")
        cell("mine_blocked", "mine", block=block)
        cell("matmul_end", "matmul")

        def load(name: str, part: str):
            return np.load(os.path.join(folder, f"{name}_{part}.npy"))

        same = {}
        for whole, blocked in (
            ("knn_whole", "knn_blocked"),
            ("knn_whole_chunk1024", "knn_blocked_chunk1024"),
        ):
            same[blocked] = bool(
                np.array_equal(load(whole, "indices"), load(blocked, "indices"))
                and np.array_equal(load(whole, "scores"), load(blocked, "scores"))
            )
        same["mine_blocked"] = bool(
            np.array_equal(load("mine_whole", "clusters"), load("mine_blocked", "clusters"))
        )
        out["identical_to_unblocked"] = same
    out["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    return out


LARGE_CELLS = ("exact_block", "ivf_calibration", "flat_ivf", "flat_ivf_torch", "hierarchical")


def large_cell(spec: dict) -> dict:
    """Child process of ``--large``: one 1M-scale measurement (its own peak RSS) on memory-mapped inputs."""
    import numpy as np
    import scipy.sparse as sp
    import torch

    from hardbatch.graph.knn import knn_exact
    from hardbatch.mining import cluster_hardness, mine_b3
    from hardbatch.mining.hierarchical import mine_b3_hierarchical
    from hardbatch.progress import peak_rss_mb

    torch.set_num_threads(spec["threads"])
    query = np.load(spec["query"], mmap_mode="r")
    positive = np.load(spec["positive"], mmap_mode="r")
    num, what = len(query), spec["what"]
    common = dict(batch_size=BATCH, cluster_size=K, skip=SKIP, window=WINDOW, device="cpu")
    started = time.perf_counter()
    row: dict = {}
    if what == "exact_block":  # one block of rows of the exact search: extrapolates the N x N cost
        rows = np.asarray(query[: spec["rows"]])
        row_t, keys_t = torch.from_numpy(rows), torch.from_numpy(np.asarray(positive))
        out = torch.empty(len(rows), num)
        times = []
        for _ in range(2):  # the first product also pays the output's first-touch page faults
            begun = time.perf_counter()
            torch.matmul(row_t, keys_t.T, out=out)
            times.append(time.perf_counter() - begun)
        del out
        matmul = min(times)
        searches = []
        for _ in range(2):  # best of two, like the matmul
            begun = time.perf_counter()
            knn_exact(rows, keys_t, SKIP + WINDOW, precision="fp32", device="cpu", show_progress=False)
            searches.append(time.perf_counter() - begun)
        search = min(searches)
        blocks = num / len(rows)
        row = {
            "rows": len(rows),
            "block_matmul_s": round(matmul, 3),
            "block_matmul_first_s": round(times[0], 3),
            "block_knn_s": round(search, 3),
            "bare_matmul_nxn_extrapolated_s": round(matmul * blocks, 1),
            "exact_knn_extrapolated_s": round(search * blocks, 1),
        }
    elif what == "ivf_calibration":  # the nprobe a window recall of 0.95 needs, and what a full search costs
        import hardbatch.graph.knn as knn_module

        begun = time.perf_counter()
        keys = knn_module._as_faiss_matrix(positive, False)
        index = knn_module.build_ivf_index(keys, nlist=None, nprobe=16)
        lists = int(index.nlist)
        row = {"nlist": lists, "build_s": round(time.perf_counter() - begun, 2)}

        def set_nprobe(value: int) -> None:
            index.nprobe = int(min(value, lists))

        ladder = sorted({min(8 * 2**i, lists) for i in range(32) if 8 * 2 ** (i - 1) < lists})
        nprobe, row["calibration"] = knn_module._calibrate(
            set_nprobe, ladder, index, query, keys, SKIP + WINDOW, target=0.95, columns=(SKIP, SKIP + WINDOW),
            sample=500, exclude_self=True, normalize=False, seed=0,
        )  # fmt: skip
        row["nprobe_for_0.95"] = nprobe
        sample = np.sort(np.random.default_rng(11).choice(num, spec["rows"], replace=False))
        rows = np.ascontiguousarray(query[sample])
        for value in sorted({16, nprobe}):
            set_nprobe(value)
            begun = time.perf_counter()
            knn_module._search(index, rows, sample, SKIP + WINDOW, True)
            seconds = time.perf_counter() - begun
            row[f"search_nprobe{value}_s"] = round(seconds, 2)
            row[f"full_search_nprobe{value}_extrapolated_s"] = round(seconds * num / spec["rows"], 1)
        row["rows"] = spec["rows"]
    elif what in ("flat_ivf", "flat_ivf_torch"):
        if what == "flat_ivf":
            knn, options = "ivf", {"nprobe": spec["nprobe"]}
        else:
            knn, options = (
                "ivf_torch",
                {"max_searched_fraction": spec["budget"]} if spec.get("budget") else None,
            )
        plan = mine_b3(
            query, positive, **common, knn=knn, faiss_options=options, store_neighbors=True, show_progress=False,
        )  # fmt: skip
        sp.save_npz(spec["out"] + "_graph.npz", sp.csr_matrix(plan.neighbors))
        np.save(spec["out"] + "_clusters.npy", plan.clusters)
        row = {
            "stages_s": {name: stage["seconds"] for name, stage in plan.stats["stages"].items()},
            "stages_peak_rss_mb": _stage_peaks(plan.stats["stages"]),
            "metis_mode": plan.params.get("metis_mode"),
            "knn_info": plan.stats.get("knn_info"),
            "knn_window_recall": plan.stats.get("knn_window_recall"),
            "knn_window_hardness": plan.stats.get("knn_window_hardness"),
            "partition": plan.stats["partition"],
            "cluster_mean_sim": round(plan.stats["hardness"]["cluster_mean_sim"], 4),
        }
    else:  # hierarchical: exact fp32 B3 inside shards of about shard_size
        plan = mine_b3_hierarchical(
            query, positive, **common, shard_size=spec["shard_size"], precision="fp32", show_progress=False
        )
        np.save(spec["out"] + "_clusters.npy", plan.clusters)
        row = {
            "shards": plan.params["hierarchical"]["shards"],
            "stages_s": {name: stage["seconds"] for name, stage in plan.stats["stages"].items()},
            "stages_peak_rss_mb": _stage_peaks(plan.stats["stages"]),
            "partition": plan.stats["partition"],
            "coarse_window_recall": plan.stats.get("coarse_window_recall"),
        }
        row["cluster_mean_sim"] = round(cluster_hardness(query, positive, plan.clusters), 4)
    row.update(seconds=round(time.perf_counter() - started, 2), peak_rss_mb=round(peak_rss_mb(), 1))
    return row


def _stage_peaks(stages: dict) -> dict[str, float]:
    """The process's peak RSS (VmHWM) at the end of each stage: the stage where it rises holds the peak."""
    return {name: stage["peak_rss_mb"] for name, stage in stages.items()}


def _peak_note(row: dict) -> str:
    """Where the peak RSS was reached (absent from results made before it was recorded)."""
    peaks = row.get("stages_peak_rss_mb")
    return f"; peak RSS MiB at the end of each stage {peaks}" if peaks else ""


def _knn_split_note(knn_info: dict) -> str:
    """Where the grouped kNN stage's time went (absent from results made before it was recorded)."""
    parts = [(label, knn_info.get(key)) for label, key in
             (("lists (k-means + assignment)", "lists_s"), ("calibration", "calibration_s"), ("search", "search_s"))]  # fmt: skip
    shown = [f"{label} {value} s" for label, value in parts if value is not None]
    return f" (kNN: {', '.join(shown)})" if shown else ""


def _metis_note(row: dict) -> str:
    mode = row.get("metis_mode")
    return f" (METIS {mode})" if mode else ""


def _coarse_recall_note(row: dict) -> str:
    recall = row.get("coarse_window_recall")
    if not recall:
        return ""
    return (
        f"; flat exact window kept by the shards {recall['window_recall']:.3f} (inside the shard "
        f"{recall['shard_coverage']:.3f}, {recall['sample']} examples)"
    )


def run_large(
    num: int,
    threads: int,
    shard_size: int,
    nprobe: int,
    cells: tuple[str, ...] = LARGE_CELLS,
    data: str = "clustered",
    budget: float | None = None,
) -> dict:
    """Issue 12 item 2 and 4 at 1M: exact cost (extrapolated from a block), faiss IVF calibrated to 0.95
    (search extrapolated from a sample), whole flat mines with faiss IVF (fixed nprobe) and ``ivf_torch``
    (calibrated to window recall 0.95; METIS + repair at N), hierarchical exact B3."""
    import tempfile

    import numpy as np
    import scipy.sparse as sp

    from _worker import run_worker

    out: dict = {
        "n": num,
        "dim": DIM,
        "threads": threads,
        "data": data,
        "ivf_budget": budget,
        "load_average_1m_start": round(os.getloadavg()[0], 2),
    }
    with tempfile.TemporaryDirectory(dir=os.environ.get("HARDBATCH_BENCH_TMP")) as folder:
        paths = write_clustered(num, folder, data)

        def cell(name: str, what: str, **spec) -> dict:
            if name not in cells:
                return {"error": "not run"}
            spec = {**paths, "what": what, "threads": threads, "out": os.path.join(folder, name), **spec}
            row = run_worker([sys.executable, __file__, "--large-cell", json.dumps(spec)])
            out[name] = row
            print(name, row, file=sys.stderr, flush=True)
            return row

        cell("exact_block", "exact_block", rows=min(num, 512))
        cell("ivf_calibration", "ivf_calibration", rows=2000)
        flats = {
            "flat_ivf": cell("flat_ivf", "flat_ivf", nprobe=nprobe),
            "flat_ivf_torch": cell("flat_ivf_torch", "flat_ivf_torch", budget=budget),
        }
        hier = cell("hierarchical", "hierarchical", shard_size=shard_size)
        # The best flat graph found is the yardstick of how many hard-negative edges a clustering keeps.
        reference = next(
            (name for name in ("flat_ivf_torch", "flat_ivf") if "error" not in flats[name]), None
        )
        if reference is not None:
            graph = sp.load_npz(os.path.join(folder, f"{reference}_graph.npz")).tocoo()

            def within(name: str) -> float:
                owner = np.full(num, -1)
                for index, members in enumerate(np.load(os.path.join(folder, f"{name}_clusters.npy"))):
                    owner[members] = index
                inside = (owner[graph.row] == owner[graph.col]) & (owner[graph.row] >= 0)
                return float(inside.mean()) if graph.nnz else 0.0

            runs = {**flats, "hierarchical": hier}
            out["within_flat_graph_edge_fraction"] = {
                "graph": reference,
                **{name: within(name) for name, row in runs.items() if "error" not in row},
            }
    out["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    return out


def large_markdown(report: dict) -> str:
    r, info = report["results"], report["machine"]
    block, cal, flat, grouped, hier = (
        r.get(name, {})
        for name in ("exact_block", "ivf_calibration", "flat_ivf", "flat_ivf_torch", "hierarchical")
    )
    mm = block.get("bare_matmul_nxn_extrapolated_s")
    ratio = lambda seconds: f"{seconds / mm:.2f}" if mm and seconds is not None else "n/a"  # noqa: E731
    lines = [
        f"# B3 mining at N = {r['n']:,}, d = {DIM} (`benchmarks/bench_b3.py --large {r['n']} --data "
        f"{r.get('data', 'clustered')}`)",
        "",
        f"Data: {DATA_NOTES[r.get('data', 'clustered')]}",
        "",
        f"Machine: {info['platform']}, CPU `{info.get('cpu_model')}` ({info.get('cpu_vendor', '?')}), "
        f"flags amx_bf16={info.get('amx_bf16')}, "
        f"avx512_bf16={info.get('avx512_bf16')}; {info['cpus']} CPUs, {r['threads']} threads; load average "
        f"{r['load_average_1m_start']} → {r['load_average_1m_end']} (shared machine: compare within this run). "
        "Each row ran in its own process (its own peak RSS).",
        "",
        "| measurement | seconds | × bare N×N fp32 matmul | peak RSS MiB | notes |",
        "|---|---|---|---|---|",
    ]
    if "error" not in block and block:
        lines.append(
            f"| bare fp32 N×N matmul (from one {block['rows']:,}-row block, into a reused output) | {mm} | 1.00 | "
            f"{block['peak_rss_mb']} | block {block['block_matmul_s']} s (first, with page faults: "
            f"{block['block_matmul_first_s']} s) |"
        )
        lines.append(
            f"| exact fp32 kNN (from the same block) | {block['exact_knn_extrapolated_s']} | "
            f"{ratio(block['exact_knn_extrapolated_s'])} | | block {block['block_knn_s']} s |"
        )
    if cal and "error" not in cal:
        nprobe = cal["nprobe_for_0.95"]
        full = cal[f"full_search_nprobe{nprobe}_extrapolated_s"]
        lines.append(
            f"| IVF search at nprobe {nprobe} of {cal['nlist']} (calibrated to window recall 0.95; from "
            f"{cal['rows']:,} rows) | {full} | {ratio(full)} | {cal['peak_rss_mb']} | index build {cal['build_s']} s; "
            f"calibration (nprobe, window recall) {cal['calibration']}; nprobe 16: "
            f"{cal['full_search_nprobe16_extrapolated_s']} s |"
        )
    if flat and "error" not in flat:
        part = flat["partition"]
        lines.append(
            f"| whole `mine_b3`, IVF nprobe {flat['knn_info'].get('nprobe')} (not calibrated) | {flat['seconds']} | "
            f"{ratio(flat['seconds'])} | {flat['peak_rss_mb']} | window recall {flat['knn_window_recall']:.3f}; "
            f"stages {flat['stages_s']}; METIS parts {part.get('metis_min_part')}–{part.get('metis_max_part')}, "
            f"{part.get('metis_empty_parts')} empty, repair moved {part.get('moved')} |"
        )
    if grouped and "error" not in grouped:
        part, knn_info = grouped["partition"], grouped["knn_info"]
        budget_note = f" within max_searched_fraction {r['ivf_budget']}" if r.get("ivf_budget") else ""
        lines.append(
            f'| whole `mine_b3`, `knn="ivf_torch"` nprobe {knn_info["nprobe"]} of {knn_info["nlist"]} (calibrated '
            f"to window recall 0.95{budget_note}, {knn_info['precision']}) | {grouped['seconds']} | {ratio(grouped['seconds'])} | "
            f"{grouped['peak_rss_mb']} | window recall {grouped['knn_window_recall']:.3f}, hardness "
            f"{grouped.get('knn_window_hardness') or float('nan'):.3f} (1,000 rows, independent "
            f"of the calibration's {knn_info.get('calibration')}); searched fraction "
            f"{knn_info['searched_fraction']}; stages {grouped['stages_s']}{_knn_split_note(knn_info)}; METIS parts "
            f"{part.get('metis_min_part')}–{part.get('metis_max_part')}, {part.get('metis_empty_parts')} empty, "
            f"repair moved {part.get('moved')}{_metis_note(grouped)}; cluster teacher similarity "
            f"{grouped['cluster_mean_sim']}{_peak_note(grouped)} |"
        )
    if hier and "error" not in hier:
        lines.append(
            f"| hierarchical `mine_b3_hierarchical`, exact fp32 in shards | {hier['seconds']} | {ratio(hier['seconds'])} | "
            f"{hier['peak_rss_mb']} | cluster teacher similarity {hier['cluster_mean_sim']} (flat: faiss IVF "
            f"{flat.get('cluster_mean_sim')}, ivf_torch {grouped.get('cluster_mean_sim')}){_coarse_recall_note(hier)}"
            f"{_peak_note(hier)} |"
        )
    within = r.get("within_flat_graph_edge_fraction")
    if within:
        graph = within.get("graph", "flat_ivf")
        shares = ", ".join(f"{name} {value:.3f}" for name, value in within.items() if name != "graph")
        lines += ["", f"Edges of the `{graph}` mutual graph inside a cluster: {shares}."]
    errors = {
        name: row["error"]
        for name, row in r.items()
        if isinstance(row, dict) and row.get("error") not in (None, "not run")
    }
    if errors:
        lines += ["", f"Failed cells: {errors}"]
    return "\n".join([*lines, ""])


def key_blocks_markdown(report: dict) -> str:
    r, info = report["results"], report["machine"]
    matmuls = [r[name]["seconds"] for name in ("matmul_start", "matmul_middle", "matmul_end")]
    mm = sum(matmuls) / len(matmuls)
    mib = lambda rows: rows * DIM * 4 / 2**20  # noqa: E731
    lines = [
        f"# Exact kNN and B3 mining over key blocks at N = {r['n']:,}, d = {DIM} "
        f"(`benchmarks/bench_b3.py --key-blocks {r['n']} --threads {r['threads']}`)",
        "",
        f"Machine: {info['platform']}, CPU `{info.get('cpu_model')}`, amx_bf16={info.get('amx_bf16')}; "
        f"{info['cpus']} CPUs, {r['threads']} torch threads; load average {r['load_average_1m_start']} → "
        f"{r['load_average_1m_end']} (shared machine: compare rows of this run only). Inputs: memory-mapped "
        f"`.npy` (query and positives {mib(r['n']):.1f} MiB each), fp32, k = {SKIP + WINDOW}. Every row is its "
        "own process; peak RSS is its `VmHWM` and includes torch (~the 'after imports' column) and the pages "
        "of the memory-mapped inputs it read (file-backed, reclaimable).",
        f"Bare fp32 N×N matmul (inputs loaded): {' / '.join(str(m) for m in matmuls)} s at start / middle / "
        f"end; ratios below use their mean, {mm:.2f} s.",
        "",
        "| run | key block | row chunk | seconds | × bare matmul | peak RSS MiB | after imports MiB | "
        "RssFile / RssAnon at end MiB | identical to unblocked |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in ("matmul_start", "knn_whole", "knn_blocked", "knn_whole_chunk1024", "knn_blocked_chunk1024",
                 "mine_whole", "mine_blocked"):  # fmt: skip
        row = r[name]
        if "error" in row:
            lines.append(f"| {name} | error: {row['error']} |")
            continue
        same = r["identical_to_unblocked"].get(name, "")
        lines.append(
            f"| {name} | {row.get('block', 'all')} | {row.get('chunk', 'auto')} | {row['seconds']} | "
            f"{row['seconds'] / mm:.2f} | {row['peak_rss_mb']} | {row['rss_after_imports_and_mmap_mb']} | "
            f"{row['rss_file_end_mb']} / {row['rss_anon_end_mb']} | {same} |"
        )
    block = r["key_block_size"]
    lines += [
        "",
        f"Resident keys: all {r['n']:,} positives = {mib(r['n']):.1f} MiB unblocked vs {mib(block):.1f} MiB per "
        f"block of {block:,}. The automatic row chunk fills 256 MiB of scores against one key block, so the "
        "score block is the same size in both default rows; with a fixed chunk of 1024 rows it shrinks with the "
        f"key block ({1024 * r['n'] * 4 / 2**20:.0f} → {1024 * block * 4 / 2**20:.0f} MiB).",
        "",
    ]
    return "\n".join(lines)


def scale_markdown(report: dict) -> str:
    r, info = report["results"], report["machine"]
    mm = r["bare_fp32_matmul_s"]
    lines = [
        f"# B3 mining at N = {r['n']:,} (`benchmarks/bench_b3.py --scale {r['n']}`)",
        "",
        f"Machine: {info['platform']}, CPU `{info.get('cpu_model')}` ({info.get('cpu_vendor', '?')}), "
        f"flags amx_bf16={info.get('amx_bf16')}, "
        f"avx512_bf16={info.get('avx512_bf16')}; {info['cpus']} CPUs; load average "
        f"{r['load_average_1m_start']} → {r['load_average_1m_end']} (shared machine: compare within this run).",
        f"Bare fp32 N×N matmul (row blocks of the search's size, into one reused output): {mm} s (again after "
        f"the exact runs: {r['bare_fp32_matmul_s_again']} s); with a fresh 4,096-row output per block, as in "
        f"runs before this one: {r.get('bare_fp32_matmul_fresh_output_s', 'n/a')} s."
        + (
            f" Bare bf16 matmul (bf16 output, same blocks): {r['bare_bf16_matmul_s']} s "
            f"({mm / r['bare_bf16_matmul_s']:.2f}× faster than fp32)."
            if "bare_bf16_matmul_s" in r
            else ""
        ),
        "",
        "| run | total s | bare matmul just before, s | × that matmul | kNN s | window agreement vs float64 | "
        "window recall | info |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("exact_fp32", "exact_bf16", "exact_fp32_previous_selection", "ivf_recall_0.95"):
        if name not in r:
            continue
        row = r[name]
        agree = row.get("window_agreement_float64")
        lines.append(
            f"| {name} | {row['total_s']} | {row.get('bare_matmul_before_s', f'{mm} (run start)')} | {row['ratio_to_matmul']} | "
            f"{row['knn_s']} | "
            f"{'' if agree is None else f'{agree:.4f}'} | {row['knn_window_recall'] or ''} | {row['knn_info']} |"
        )
    for run in ("exact_fp32", "exact_bf16"):
        stages = r.get(run, {}).get("stages_s")
        if not stages:
            continue
        outside = sum(seconds for name, seconds in stages.items() if name != "knn")
        lines += [
            "",
            f"Stages of {run}, seconds: "
            + ", ".join(f"{name} {seconds:.2f}" for name, seconds in stages.items())
            + f" (outside the kNN {outside:.2f} s = {outside / r[run]['bare_matmul_before_s']:.2f}× "
            "the fp32 matmul).",
        ]
    h = r.get("hierarchical_4_shards")
    if h is None:
        return "\n".join([*lines, ""])
    gcbs_bf16 = r.get("gcbs_threshold_graph_bf16_s", "not run")
    lines += [
        "",
        f"- Hierarchical (4 shards): {h['total_s']} s; fraction of the flat mutual graph's edges inside a cluster "
        f"{h['within_flat_graph_edge_fraction']:.3f} vs flat {h['flat_within_flat_graph_edge_fraction']:.3f}; "
        f"cluster teacher similarity {h['cluster_mean_sim']} vs flat {h['flat_cluster_mean_sim']}.",
        f"- GCBS threshold graph (target degree 64): fp32 {r['gcbs_threshold_graph_fp32_s']} s"
        + (
            f", bf16 {gcbs_bf16} s; {r.get('gcbs_edges_differing', 0)} of {r['gcbs_edges']:,} edges differ, all "
            f"within {r.get('gcbs_differing_max_abs_from_threshold', 0):.1e} of the threshold in float64 (fp32 "
            "rounding: gemm vs re-scoring order)."
            if "gcbs_threshold_graph_bf16_s" in r
            else f" ({r['gcbs_edges']:,} edges; bf16 not run)."
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,50000,100000")
    parser.add_argument("--backends", default="exact,hnsw")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--one", nargs=2, metavar=("N", "BACKEND"), help=argparse.SUPPRESS)
    parser.add_argument("--scale", type=int, help="issue-12 comparisons at this N (one process)")
    parser.add_argument(
        "--skip-bf16", action="store_true", help="with --scale: no bf16 runs (slow without AMX)"
    )
    parser.add_argument("--exact-only", action="store_true", help="with --scale: matmul + exact runs only")
    parser.add_argument("--tag", default="", help="with --scale: suffix of the result files (machine kind)")
    parser.add_argument("--key-blocks", type=int, metavar="N", help="unblocked vs key-blocked kNN at this N")
    parser.add_argument("--key-block-size", type=int, help="with --key-blocks: B (default N / 8)")
    parser.add_argument("--key-block-cell", help=argparse.SUPPRESS)
    parser.add_argument("--large", type=int, metavar="N", help="1M-scale IVF / hierarchical runs at this N")
    parser.add_argument(
        "--shard-size", type=int, default=62_500, help="with --large: hierarchical shard size"
    )
    parser.add_argument(
        "--nprobe", type=int, default=16, help="with --large: nprobe of the whole flat IVF mine"
    )
    parser.add_argument(
        "--cells", default=",".join(LARGE_CELLS), help="with --large: which measurements (default all)"
    )
    parser.add_argument(
        "--data", default="clustered", choices=sorted(DATA_KINDS), help="with --large: data kind"
    )
    parser.add_argument(
        "--ivf-budget",
        type=float,
        help="with --large: max_searched_fraction of the ivf_torch mine (default none)",
    )
    parser.add_argument("--large-cell", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HARDBATCH_PROGRESS", "0")
    if args.key_block_cell:
        print(json.dumps(key_block_cell(json.loads(args.key_block_cell))))
        return
    if args.large_cell:
        print(json.dumps(large_cell(json.loads(args.large_cell))))
        return
    if args.large:
        from hardbatch.io import atomic_write, write_json

        cells = tuple(name for name in args.cells.split(",") if name)
        unknown = sorted(set(cells) - set(LARGE_CELLS))
        if unknown:
            parser.error(f"unknown --cells {unknown}; expected some of {', '.join(LARGE_CELLS)}")

        report = {
            "benchmark": "b3_large",
            "machine": machine(),
            "results": run_large(
                args.large, args.threads, args.shard_size, args.nprobe, cells, args.data, args.ivf_budget
            ),
        }
        stem = f"b3_large_{args.large}" + ("" if args.data == "clustered" else f"_{args.data}")
        stem += ("" if set(cells) == set(LARGE_CELLS) else "_" + "_".join(cells)) + (
            f"_{args.tag}" if args.tag else ""
        )
        write_json(RESULTS / f"{stem}.json", report)
        with atomic_write(RESULTS / f"{stem}.md") as handle:
            handle.write(large_markdown(report))
        print(large_markdown(report))
        return
    if args.key_blocks:
        from hardbatch.io import atomic_write, write_json

        report = {
            "benchmark": "b3_key_blocks",
            "machine": machine(),
            "results": run_key_blocks(args.key_blocks, args.threads, args.key_block_size),
        }
        stem = f"b3_key_blocks_{args.key_blocks}_threads{args.threads}"
        if args.key_block_size:
            stem += f"_block{args.key_block_size}"
        write_json(RESULTS / f"{stem}.json", report)
        with atomic_write(RESULTS / f"{stem}.md") as handle:
            handle.write(key_blocks_markdown(report))
        print(key_blocks_markdown(report))
        return
    if args.scale:
        from hardbatch.io import atomic_write, write_json

        info = machine()
        report = {
            "benchmark": "b3_scale",
            "machine": info,
            "results": run_scale(args.scale, args.threads, args.skip_bf16, args.exact_only),
        }
        stem = f"b3_scale_{args.scale}" + (f"_{args.tag}" if args.tag else "")
        write_json(RESULTS / f"{stem}.json", report)
        with atomic_write(RESULTS / f"{stem}.md") as handle:
            handle.write(scale_markdown(report))
        print(scale_markdown(report))
        return
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
