"""Run every benchmark in sequence (``make bench``).

Each script prints JSON and a table and writes ``benchmarks/results/<name>.{json,md}``. They run one after
another, never in parallel, so their timings are not disturbed by each other. The GPU loss benchmark runs
only when CUDA is present; the quality grid (about 90 minutes on 2 cores) only with ``--quality``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CPU_BENCHMARKS = [
    ["bench_data.py"],
    ["bench_evaluate.py"],
    ["bench_loss.py"],
    ["bench_gcbs.py"],
    ["bench_b3.py"],
    ["bench_hardness.py"],
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default="", help="comma-separated script names (default: all)")
    parser.add_argument("--quality", action="store_true", help="also run the quality grid (long)")
    args = parser.parse_args()
    runs = list(CPU_BENCHMARKS)
    try:
        import torch

        if torch.cuda.is_available():
            runs.append(["bench_loss_gpu.py"])
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    if args.quality:
        runs.append(["quality.py"])
    if args.only:
        wanted = {name if name.endswith(".py") else f"{name}.py" for name in args.only.split(",")}
        runs = [run for run in runs if run[0] in wanted]
    failures = []
    for script, *extra in runs:
        start = time.perf_counter()
        print(f"\n=== {script} ===", flush=True)
        code = subprocess.call([sys.executable, str(HERE / script), *extra])
        print(f"=== {script}: exit {code} after {time.perf_counter() - start:.0f} s ===", flush=True)
        if code != 0:
            failures.append(script)
    if failures:
        print(f"failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
