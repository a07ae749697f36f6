"""Benchmark: one training step (fwd + loss + bwd + AdamW) of MiniLM at 32 pairs, fp32 vs bf16 autocast.

The step is hardbatch's own (:class:`hardbatch.train.step.StepRunner` around a ``DualEncoder``): 32 query and
32 document texts of ``--tokens`` random tokens, symmetric InfoNCE, scale 20. The two precisions alternate
step by step in one process (``--steps`` each after one warm-up step each), so a change of machine load hits
both alike; the best step time of each is kept and their ratio reported. This only informs the choice of
``--precision auto``; it does not change it (that needs a quality comparison). The machine's bf16 flags are
recorded: without AMX, bf16 autocast is expected to be slower.

Usage: python benchmarks/bench_precision_step.py [--model default] [--steps 3] [--tokens 64] [--threads 1] [--tag zen4]
Writes benchmarks/results/precision_step[_TAG].json and .md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from types import SimpleNamespace

RESULTS = Path(__file__).parent / "results"


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as info:
        return next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), "?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tag", default="", help="suffix of the result files (one per machine kind)")
    args = parser.parse_args()
    import torch

    from hardbatch.device import cpu_flags, fast_bf16_matmul
    from hardbatch.embed.models import load_model
    from hardbatch.io import atomic_write, write_json
    from hardbatch.train.step import DualEncoder, StepRunner

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_model(args.model)
    model.train()
    encoder = DualEncoder(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    gen = torch.Generator().manual_seed(1)

    def column():
        ids = torch.randint(1000, 30000, (args.pairs, args.tokens), generator=gen)
        ids[:, 0], ids[:, -1] = 101, 102
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "token_type_ids": torch.zeros_like(ids),
        }

    batch = SimpleNamespace(query=column(), document=column(), query_ids=None, key_ids=None)
    config = SimpleNamespace(scale=20.0, symmetric=True, gradcache_chunk=None)
    ctx = SimpleNamespace(group=None, device=torch.device("cpu"))
    runners = {
        "fp32": StepRunner(encoder, config, ctx, None),
        "bf16": StepRunner(encoder, config, ctx, torch.bfloat16),
    }
    times: dict[str, list[float]] = {name: [] for name in runners}
    load_start = os.getloadavg()[0]
    for step in range(args.steps + 1):
        for name, runner in runners.items():
            start = time.perf_counter()
            runner.step(batch)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step > 0:  # step 0 warms up each precision
                times[name].append(time.perf_counter() - start)
    best = {name: min(values) for name, values in times.items()}
    flags = cpu_flags() or frozenset()
    report = {
        "benchmark": "precision_step",
        "machine": {
            "cpu": _cpu_model(),
            "bf16_flags": sorted(flags & {"amx_bf16", "amx_tile", "avx512_bf16"}),
            "bf16_tiles": fast_bf16_matmul("cpu"),
            "platform": platform.platform(),
            "threads": args.threads,
            "torch": torch.__version__,
            "load_average_start": round(load_start, 2),
            "load_average_end": round(os.getloadavg()[0], 2),
        },
        "params": vars(args),
        "seconds": times,
        "best_seconds": best,
        "bf16_over_fp32": best["bf16"] / best["fp32"],
    }
    m = report["machine"]
    table = "\n".join(
        [
            "# One MiniLM training step, fp32 vs bf16 autocast (hardbatch StepRunner + AdamW)",
            "",
            f"Machine: {m['cpu']}, bf16 flags {m['bf16_flags']}, threads {m['threads']}, torch {m['torch']}; load "
            f"average {m['load_average_start']} → {m['load_average_end']} (alternating steps: compare the ratio).",
            "",
            f"{args.pairs} pairs × {args.tokens} tokens, best of {args.steps} steps each.",
            "",
            "| precision | best step s | all steps s |",
            "|---|---:|---:|",
            *(f"| {n} | {best[n]:.3f} | {', '.join(f'{t:.2f}' for t in times[n])} |" for n in runners),
            "",
            f"bf16 / fp32 step time: {report['bf16_over_fp32']:.2f}",
            "",
        ]
    )
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"precision_step_{args.tag}" if args.tag else "precision_step"
    write_json(RESULTS / f"{stem}.json", report)
    with atomic_write(RESULTS / f"{stem}.md") as handle:
        handle.write(table)


if __name__ == "__main__":
    main()
