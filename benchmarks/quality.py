"""Benchmark: retrieval quality of fine-tuning with mined vs random batches at equal compute.

Grid: sampler ∈ {random, gcbs, topic, b3} × batch size ∈ {32, 64, 512 (gradient cache)} × seeds {0, 1}.
Every cell fine-tunes the packaged all-MiniLM-L6-v2 on the same fixed subset of codesearch train, sees
the same number of training pairs (so batch 512 takes 16× fewer steps than batch 32), and is evaluated on
the same subset of codesearch test (function names masked): nDCG@10 and MRR@10, mean ± std over seeds.
The frozen model is the reference line. Mining (B3 plans, GCBS graph, topic k-means) uses the same
model, frozen, as teacher. See :mod:`hardbatch.app.experiment` for the protocol.

Default sizes fit about 75 minutes on 2 idle CPU cores (measured: one step of 32 pairs at 64 tokens ≈ 4.9 s,
evaluating 600 test queries ≈ 21 s): 1,024 training pairs seen per cell at 64 tokens, 600 test queries,
24 cells ≈ 24 × (1,024 × 0.15 s + 21 s); at this budget batch 512 gets two optimizer steps, so the CPU grid
answers the ordering at equal batch size, and the GPU setting the batch-size question. ``--full`` is the
GPU setting (20,000 training pairs, 128 tokens, all test queries, 3 seeds). Resumable per cell: finished cells are skipped.

Cost: O(cells × pairs_seen) forward/backward passes + O(cells × test queries) evaluation passes.

Usage: python benchmarks/quality.py [--full] [--samplers random,b3] [--batch-sizes 32,512] [--seeds 0,1]
       [--train-pairs N] [--test-pairs N] [--max-seq-length L] [--lr LR] [--model PATH] [--teacher PATH]
       [--train-data SPEC] [--test-data SPEC] [--precision P] [--name NAME]
Writes benchmarks/results/quality.json, quality.md and quality.png (cells under benchmarks/results/quality/)
and prints JSON and the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from hardbatch.app.experiment import GridConfig, format_grid, run_grid, write_grid_outputs

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="GPU setting: 20k pairs, 128 tokens, 3 seeds.")
    parser.add_argument("--model", default=None, help="Starting model (default: packaged MiniLM).")
    parser.add_argument("--teacher", default=None, help="Mining teacher (default: the starting model).")
    parser.add_argument("--train-data", default=None, help="Training pairs spec (default: codesearch:train).")
    parser.add_argument("--test-data", default=None, help="Evaluation pairs spec (default: codesearch:test).")
    parser.add_argument("--samplers", default=None, help="Comma-separated sampler names.")
    parser.add_argument("--batch-sizes", default=None, help="Comma-separated batch sizes.")
    parser.add_argument("--seeds", default=None, help="Comma-separated seeds.")
    parser.add_argument("--train-pairs", type=int, default=None)
    parser.add_argument("--test-pairs", type=int, default=None)
    parser.add_argument("--pairs-seen", type=int, default=None)
    parser.add_argument("--max-seq-length", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--precision", default=None, help="Training precision: auto, fp32 or bf16.")
    parser.add_argument("--name", default="quality", help="Output name under benchmarks/results/.")
    parser.add_argument(
        "--summarize-only", action="store_true", help="Train nothing; summarise the cells already run."
    )
    args = parser.parse_args(argv)

    config = GridConfig(work_dir=str(RESULTS / args.name))
    if args.full:
        config.train_pairs, config.test_pairs, config.max_seq_length = 20000, None, 128
        config.seeds, config.gradcache_chunk, config.eval_batch_size = (0, 1, 2), 128, 256
        config.cluster_size, config.skip, config.window = 32, 30, 100
    if args.samplers:
        config.samplers = tuple(args.samplers.split(","))
    if args.batch_sizes:
        config.batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    if args.seeds:
        config.seeds = tuple(int(s) for s in args.seeds.split(","))
    fields = ("model", "teacher", "train_data", "test_data", "train_pairs", "test_pairs", "pairs_seen")
    for field in (*fields, "max_seq_length", "lr", "precision"):
        if getattr(args, field) is not None:
            setattr(config, field, getattr(args, field))

    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    summary = run_grid(config, log=log, train_missing=not args.summarize_only)
    paths = write_grid_outputs(summary, RESULTS, args.name)
    print(
        json.dumps(
            {
                "findings": summary["findings"],
                "frozen": summary["frozen"],
                **{k: str(v) for k, v in paths.items()},
            },
            indent=2,
        )
    )
    print(format_grid(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
