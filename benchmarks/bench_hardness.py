"""Benchmark: batch hardness of every sampler on the codesearch train split at batch size 64.

Teacher: the packaged all-MiniLM-L6-v2 (inputs truncated to 128 tokens), embeddings cached under the
hardbatch cache (``embeddings/<dataset fingerprint>-default-msl128``), so only the first run pays the
~8 min (2 cores) embedding pass. For each strategy — random, nodup, topic (k-means), source, GCBS (fixed
teacher; paper quantile 0.999 and target degree = batch size), B3 — one epoch of batches is measured with
:func:`hardbatch.evaluate.hardness.compare_batchings` against random batches of the same sizes: in-batch
negative similarity (mean, p50, p90), hardest negative, in-batch InfoNCE, recall@1, fraction of the
teacher's top-10 pairs in one batch, and the seconds each sampler needed to produce its epoch.

Complexity: the neighbour pairs are one O(N² d) pass; each strategy O(N b d); GCBS O(N² d); B3 O(N² d)
for its exact kNN.

Usage: python benchmarks/bench_hardness.py [--data codesearch:train] [--batch-size 64] [--samplers ...]
Writes benchmarks/results/hardness.json, hardness.md and hardness.png and prints JSON and the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
STRATEGIES = {
    "random": ("random", {}),
    "nodup": ("nodup", {}),
    "topic": ("topic", {}),
    "source": ("source", {}),
    "gcbs (q=0.999)": ("gcbs", {}),
    "gcbs (degree=b)": ("gcbs", {"target_degree": None}),  # filled with the batch size
    "b3": ("b3", {"mine_options": {"cluster_size": 32}}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="codesearch:train")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--samplers", default=",".join(STRATEGIES), help="comma-separated strategy labels")
    parser.add_argument(
        "--embed-only", action="store_true", help="only compute (cache) the teacher embeddings"
    )
    parser.add_argument("-o", "--output", "--out", dest="out", default=str(RESULTS / "hardness"))
    args = parser.parse_args()

    import torch

    from hardbatch.app.cli.inspect_cmd import build_strategy_batches, teacher_embeddings
    from hardbatch.data import load_pairs
    from hardbatch.evaluate.hardness import compare_batchings, plot_comparison

    started = time.perf_counter()
    dataset = load_pairs(args.data)
    teacher = teacher_embeddings(
        dataset,
        "default",
        query_emb=None,
        positive_emb=None,
        emb_dir=None,
        max_seq_length=args.max_seq_length,
    )
    query, positive = teacher.query, teacher.positive
    embed_seconds = time.perf_counter() - started
    print(
        f"{len(dataset)} pairs, teacher embeddings {query.shape} ready after {embed_seconds:.0f} s",
        flush=True,
    )
    if args.embed_only:
        return
    build_strategy_batches(["random"], dataset, args.batch_size, query, positive)  # warm-up: imports
    batchings, groups, details, seconds = {}, {}, {}, {}
    for label in args.samplers.split(","):
        name, options = STRATEGIES[label]
        options = {k: (args.batch_size if v is None else v) for k, v in options.items()}
        start = time.perf_counter()
        built, group, detail = build_strategy_batches(
            [name], dataset, args.batch_size, query, positive, options={name: options}
        )
        seconds[label] = round(time.perf_counter() - start, 2)
        batchings[label] = built[name]
        if name in group:
            groups[label] = group[name]
        details[label] = detail[name]
        print(f"{label}: {len(built[name])} batches in {seconds[label]} s", flush=True)
    report = compare_batchings(query, positive, batchings, k=10, groups=groups, seed=0)
    record = {
        "benchmark": "hardness",
        "data": args.data,
        "num_examples": len(dataset),
        "batch_size": args.batch_size,
        "teacher": "all-MiniLM-L6-v2 (packaged)",
        "max_seq_length": args.max_seq_length,
        "sampler_seconds": seconds,
        "details": details,
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0],
        },
        **report,
    }
    header = (
        "| strategy | batches | neg sim mean (random) | neg sim p90 | hardest neg (random) | InfoNCE (random) "
        "| recall@1 (random) | top-10 pairs in batch (random) | groups/batch | epoch seconds |"
    )
    lines = [
        f"# Batch hardness on {args.data} (N={len(dataset)}), batch {args.batch_size}, teacher MiniLM "
        f"(max {args.max_seq_length} tokens)",
        "",
        "Each strategy vs random batches of the same sizes, under the teacher. InfoNCE at scale 20. "
        f"Machine: {record['machine']['platform']}, {record['machine']['cpu_count']} CPUs.",
        "",
        header,
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, e in report["strategies"].items():
        r = e["random"]
        groups_cell = f"{e['groups']['groups_per_batch_mean']:.1f}" if "groups" in e else "-"
        lines.append(
            f"| {label} | {e['batches']} | {e['neg_sim_mean']:.3f} ({r['neg_sim_mean']:.3f}) | "
            f"{e['neg_sim_p90']:.3f} | {e['hardest_neg_sim_mean']:.3f} ({r['hardest_neg_sim_mean']:.3f}) | "
            f"{e['infonce']:.3f} ({r['infonce']:.3f}) | {e['recall@1']:.3f} ({r['recall@1']:.3f}) | "
            f"{e['knn_pair_coverage']:.3f} ({e['random_knn_pair_coverage']:.4f}) | {groups_cell} | "
            f"{seconds[label]} |"
        )
    print(json.dumps({k: v for k, v in record.items() if k != "hist_bins"}, indent=1, default=str)[:20000])
    print("\n".join(lines))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    slim = json.loads(json.dumps(record, default=str))
    out.with_suffix(".json").write_text(json.dumps(slim, indent=1) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot_comparison(report, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
