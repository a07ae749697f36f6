"""Benchmark (CUDA only): fused Triton CLIP loss vs a materialised torch loss vs the torch tiled path.

For each batch size b (= n, square CLIP) and feature dim d, with bf16 unit-norm features, scale 20 and
diagonal labels, every method computes the symmetric CLIP loss and the gradients w.r.t. q, k and the scale:

* ``triton``        : ``triton_kernels.fused_lse_forward`` + ``fused_backward`` (fast mode, fp32 atomics).
* ``triton_det``    : same, ``deterministic=True`` (two atomic-free backward kernels).
* ``info_nce``      : the public ``hardbatch.losses.info_nce(..., backend="triton")`` (autograd wiring).
* ``torch_tiled``   : ``hardbatch.losses.tiled`` kernels (torch ops per tile, default CUDA tiles).
* ``naive``         : ``logits = scale · (q @ k.T).float()``; ``(CE(logits) + CE(logits.T)) / 2``; autograd.

Reported per method: median fwd+bwd milliseconds over ``--reps`` runs (CUDA events, after a warm-up run
that also autotunes), peak memory above the inputs (``torch.cuda.max_memory_allocated`` delta), useful
TFLOP/s (model FLOPs ``6·b²·d``: one logits matmul + two gradient matmuls, as for MFU), executed TFLOP/s
(what the method actually runs: triton 8·b²·d, triton_det 10·b²·d, tiled 8·b²·d, naive 6·b²·d), and
ratios vs ``triton``. At the smallest size the script also records each method's max relative deviation
from a float64 materialised loss (loss, dq, dk, dscale) as a correctness check on the real GPU.

Time grows as O(b²·d) for every method; memory is O(b²) for ``naive`` (skipped when its estimate exceeds
free GPU memory, and OOM is caught) and O(b·d) + O(tile) for the others.

Usage: python benchmarks/bench_loss_gpu.py [--sizes 4096,16384,65536,262144] [--dims 384,768] [--reps 3]
Writes benchmarks/results/loss_gpu.json and loss_gpu.md (with the device name). Without CUDA (or Triton)
it prints why and exits with status 2, writing nothing. ``--smoke`` runs tiny sizes on any device
(CPU needs TRITON_INTERPRET=1 for the triton methods) to check the script, and never writes results.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
METHODS = ("triton", "triton_det", "info_nce", "torch_tiled", "naive")
EXECUTED_FLOP_FACTOR = {"triton": 8, "triton_det": 10, "info_nce": 8, "torch_tiled": 8, "naive": 6}
# Dense BF16 tensor-core peaks (TFLOP/s) for the fraction-of-peak column; None for unknown devices.
BF16_PEAK_TFLOPS = {"H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "H200": 989.4, "A100": 312.0}
SCALE = 20.0


def _peak_for(device_name: str) -> float | None:
    for key, peak in BF16_PEAK_TFLOPS.items():
        if key in device_name:
            return peak
    return None


def make_problem(b: int, d: int, device: torch.device, dtype: torch.dtype, seed: int = 0) -> dict:
    """Unit-norm random features (queries are noisy copies of their keys, so the loss is not trivial)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    k = torch.nn.functional.normalize(torch.randn(b, d, generator=gen), dim=1)
    q = torch.nn.functional.normalize(k + 0.8 * torch.randn(b, d, generator=gen) / math.sqrt(d) * 4, dim=1)
    return {
        "q": q.to(device=device, dtype=dtype),
        "k": k.to(device=device, dtype=dtype),
        "scale": torch.tensor(SCALE, device=device),
        "labels": torch.arange(b, device=device),
    }


def _kernel_clip(kernels, p: dict, **backward_kwargs) -> tuple[torch.Tensor, ...]:
    """Symmetric CLIP loss and gradients through a kernel module (triton_kernels or tiled)."""
    q, k, scale, labels = p["q"], p["k"], p["scale"], p["labels"]
    b = q.shape[0]
    tiles = (None, None) if kernels.__name__.endswith("triton_kernels") else kernels.DEFAULT_TILE_CUDA
    row, col, pos = kernels.fused_lse_forward(q, k, scale, labels, None, None, True, *tiles)
    loss = ((row - pos).mean() + (col - pos).mean()) / 2  # labels = arange: key j's positive is query j
    g = torch.full((b,), 0.5 / b, device=q.device)
    dq, dk, dscale = kernels.fused_backward(
        q, k, scale, labels, None, None, row, col, g, g, *tiles, **backward_kwargs
    )
    return loss, dq, dk, dscale


def _naive_clip(p: dict) -> tuple[torch.Tensor, ...]:
    q = p["q"].detach().requires_grad_()
    k = p["k"].detach().requires_grad_()
    scale = p["scale"].detach().requires_grad_()
    logits = scale * (q @ k.T).float()
    ce = torch.nn.functional.cross_entropy
    loss = (ce(logits, p["labels"]) + ce(logits.T, p["labels"])) / 2
    loss.backward()
    return loss.detach(), q.grad, k.grad, scale.grad


def _fp64_clip(p: dict) -> tuple[torch.Tensor, ...]:
    """Accuracy reference: the materialised loss in float64 (small b only)."""
    q = p["q"].double().requires_grad_()
    k = p["k"].double().requires_grad_()
    scale = p["scale"].double().requires_grad_()
    logits = scale * q @ k.T
    ce = torch.nn.functional.cross_entropy
    loss = (ce(logits, p["labels"]) + ce(logits.T, p["labels"])) / 2
    loss.backward()
    return loss.detach(), q.grad, k.grad, scale.grad


def _info_nce_clip(p: dict) -> tuple[torch.Tensor, ...]:
    from hardbatch.losses import info_nce

    q = p["q"].detach().requires_grad_()
    k = p["k"].detach().requires_grad_()
    scale = p["scale"].detach().requires_grad_()
    loss = info_nce(q, k, p["labels"], scale=scale, symmetric=True, backend="triton")
    loss.backward()
    return loss.detach(), q.grad, k.grad, scale.grad


def method_fn(name: str, p: dict) -> Callable[[], tuple[torch.Tensor, ...]]:
    if name in ("triton", "triton_det"):
        from hardbatch.losses import triton_kernels

        return lambda: _kernel_clip(triton_kernels, p, deterministic=name == "triton_det")
    if name == "torch_tiled":
        from hardbatch.losses import tiled

        return lambda: _kernel_clip(tiled, p)
    if name == "info_nce":
        return lambda: _info_nce_clip(p)
    if name == "naive":
        return lambda: _naive_clip(p)
    raise ValueError(name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable, device: torch.device, reps: int) -> dict:
    """Warm-up (autotuning) run, then ``reps`` timed runs; peak memory above what was allocated before."""
    fn()
    _sync(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            out = fn()
            times.append((time.perf_counter() - began) * 1e3)
        del out
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if cuda else None
    return {"ms": sorted(times)[len(times) // 2], "peak_mb": peak}


def naive_bytes(b: int) -> int:
    """Rough peak of the materialised loss: bf16 product + ~5 fp32 b×b buffers (logits, CE, grads)."""
    return b * b * (2 + 5 * 4)


def relative_errors(out: tuple, ref: tuple) -> dict:
    names = ("loss", "dq", "dk", "dscale")
    errs = {}
    for name, a, r in zip(names, out, ref):
        a64, r64 = a.detach().double(), r.detach().double()
        errs[name] = float((a64 - r64).abs().max() / r64.abs().max().clamp_min(1e-12))
    return errs


def run_size(b: int, d: int, methods: list[str], device: torch.device, reps: int, args) -> list[dict]:
    p = make_problem(b, d, device, torch.bfloat16)
    rows = []
    reference = None
    for name in methods:
        row = {"b": b, "n": b, "d": d, "method": name}
        if name == "naive" and device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if naive_bytes(b) > free:
                row["status"] = f"skipped (needs ~{naive_bytes(b) / 2**30:.0f} GiB)"
                rows.append(row)
                continue
        if name == "torch_tiled" and b > args.tiled_max_b:
            row["status"] = f"skipped (b > --tiled-max-b {args.tiled_max_b})"
            rows.append(row)
            continue
        try:
            fn = method_fn(name, p)
            row.update(measure(fn, device, reps))
            row["status"] = "ok"
            if b == min(args.sizes) and args.check:
                out = fn()
                if reference is None and b * b * 8 * 6 < 8 * 2**30:
                    reference = _fp64_clip(p)
                if reference is not None:
                    row["rel_err_vs_fp64"] = relative_errors(out, reference)
                del out
        except torch.OutOfMemoryError:
            row["status"] = "OOM"
        except Exception as exc:  # a failing method must not hide the others' figures
            row["status"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if row["status"] == "ok":
            useful = 6 * b * b * d
            row["useful_tflops"] = useful / (row["ms"] * 1e-3) / 1e12
            row["executed_tflops"] = EXECUTED_FLOP_FACTOR[name] * b * b * d / (row["ms"] * 1e-3) / 1e12
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = next((r for r in rows if r["method"] == "triton" and r["status"] == "ok"), None)
    for row in rows:
        if base is not None and row["status"] == "ok":
            row["time_vs_triton"] = row["ms"] / base["ms"]
            if row.get("peak_mb") and base.get("peak_mb"):
                row["memory_vs_triton"] = row["peak_mb"] / base["peak_mb"]
    return rows


def to_markdown(report: dict) -> str:
    peak = report["bf16_peak_tflops"]
    lines = [
        "# Fused CLIP loss on GPU: Triton vs materialised torch vs torch tiled",
        "",
        f"Device: {report['device']}; torch {report['torch']}, triton {report['triton']}; bf16 inputs, "
        f"scale {SCALE}, b = n, median of {report['reps']} runs after a warm-up/autotune run.",
        "Useful FLOPs = 6·b²·d (model FLOPs); executed = what each method runs "
        "(triton 8·b²·d, triton_det 10·b²·d, tiled 8·b²·d, naive 6·b²·d).",
        "",
        "| b | d | method | status | ms | peak MB | useful TFLOP/s | executed TFLOP/s | "
        + ("% of BF16 peak (executed) | " if peak else "")
        + "time / triton | memory / triton |",
        "|---:|---:|---|---|---:|---:|---:|---:|" + ("---:|" if peak else "") + "---:|---:|",
    ]

    def fmt(value, spec):
        return "" if value is None else format(value, spec)

    for r in report["results"]:
        cells = [
            f"{r['b']:,}",
            str(r["d"]),
            r["method"],
            r["status"],
            fmt(r.get("ms"), ".1f"),
            fmt(r.get("peak_mb"), ",.0f"),
            fmt(r.get("useful_tflops"), ".1f"),
            fmt(r.get("executed_tflops"), ".1f"),
        ]
        if peak:
            cells.append(fmt(r["executed_tflops"] / peak * 100 if r.get("executed_tflops") else None, ".0f"))
        cells += [fmt(r.get("time_vs_triton"), ".2f"), fmt(r.get("memory_vs_triton"), ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    checks = [r for r in report["results"] if "rel_err_vs_fp64" in r]
    if checks:
        lines += ["", "Max relative deviation from the float64 materialised loss (smallest size):", ""]
        for r in checks:
            errs = ", ".join(f"{k} {v:.1e}" for k, v in r["rel_err_vs_fp64"].items())
            lines.append(f"- {r['method']} (b={r['b']:,}, d={r['d']}): {errs}")
    return "\n".join(lines) + "\n"


def _write(report: dict) -> None:
    from hardbatch.io import atomic_write, write_json

    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "loss_gpu.json", report)
    with atomic_write(RESULTS / "loss_gpu.md") as handle:
        handle.write(to_markdown(report))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4096,16384,65536,262144")
    parser.add_argument("--dims", default="384,768")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tiled-max-b", type=int, default=65536, help="skip torch_tiled above this b")
    parser.add_argument("--no-check", dest="check", action="store_false", help="skip the accuracy check")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on any device; writes nothing")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    dims = [int(s) for s in args.dims.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    if args.smoke:
        args.sizes, dims = [48, 80], [24]
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        if not torch.cuda.is_available():
            print("bench_loss_gpu: no CUDA device is available; this benchmark measures GPU kernels only "
                  "and writes no figures without one (use --smoke to check the script).", file=sys.stderr)  # fmt: skip
            return 2
        device = torch.device("cuda")
    try:
        import triton
    except ImportError:
        print("bench_loss_gpu: triton is not installed (pip install 'hardbatch[triton]').", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor()})"
    report = {
        "device": name,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "platform": platform.platform(),
        "dtype": "bfloat16",
        "scale": SCALE,
        "reps": args.reps,
        "bf16_peak_tflops": _peak_for(name),
        "results": [],
    }
    for d in dims:
        for b in args.sizes:
            report["results"].extend(run_size(b, d, methods, device, args.reps, args))
            if not args.smoke:  # after every size, so a run cut short keeps what it measured
                _write(report)
    print(to_markdown(report))
    if args.smoke:
        print("(smoke run: results not written)")
        return 0
    print(f"wrote {RESULTS / 'loss_gpu.json'} and {RESULTS / 'loss_gpu.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
