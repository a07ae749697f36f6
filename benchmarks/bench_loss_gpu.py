"""Benchmark (CUDA only): fused Triton CLIP / sigmoid losses vs materialised torch, torch tiles and peers.

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

``--loss sigmoid`` measures the sigmoid (SigLIP) loss instead (scale 10, bias −10 as SigLIP's init,
gradients w.r.t. q, k, scale and bias; accuracy reference: the float64 materialised sigmoid loss):

* ``sig_triton``        : ``sigmoid_loss(..., backend="triton")`` (``triton_sigmoid`` kernels, autograd).
* ``sig_triton_det``    : same under ``torch.use_deterministic_algorithms(True)`` (atomic-free backward).
* ``sig_torch_tiled``   : ``sigmoid_loss(..., backend="torch")`` (``sigmoid_tiled``, default CUDA tiles).
* ``sig_naive``         : ``x = scale·(q @ k.T).float() + bias``; ``−logsigmoid(z·x).sum() / b``; autograd.
* ``sig_open_clip``     : ``open_clip.loss.SigLipLoss`` (single process: materialised), if importable.
* ``sig_siglip_kernel`` : ``siglip_kernel.fused_siglip_loss(img, txt, log_scale, bias)`` (PyPI
  ``siglip-kernel``), if importable; its log-scale gradient is converted to d/d scale for the check.

Peers that are not installed are reported as ``skipped (not installed)``; nothing is estimated for them.

Time grows as O(b²·d) for every method; memory is O(b²) for ``naive`` (skipped when its estimate exceeds
free GPU memory, and OOM is caught) and O(b·d) + O(tile) for the others.

Usage: python benchmarks/bench_loss_gpu.py [--loss clip|sigmoid] [--sizes 4096,16384,65536,262144]
[--dims 384,768] [--reps 3] [--methods ...]
Writes benchmarks/results/loss_gpu.json and loss_gpu.md (``--loss sigmoid``: loss_gpu_sigmoid.*), with the
device name. Without CUDA (or Triton)
it prints why and exits with status 2, writing nothing. ``--smoke`` runs tiny sizes on any device
(CPU needs TRITON_INTERPRET=1 for the triton methods) to check the script, and never writes results.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
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
SIGMOID_METHODS = (
    "sig_triton", "sig_triton_det", "sig_torch_tiled", "sig_naive", "sig_open_clip", "sig_siglip_kernel",
)  # fmt: skip
# Per loss: its methods, the baseline of the ratio columns, result file stem.
LOSSES = {
    "clip": (METHODS, "triton", "loss_gpu"),
    "sigmoid": (SIGMOID_METHODS, "sig_triton", "loss_gpu_sigmoid"),
}
# Matmul FLOPs each method executes, in units of b·n·d (None: unknown, e.g. a peer's internals).
EXECUTED_FLOP_FACTOR = {
    "triton": 8, "triton_det": 10, "info_nce": 8, "torch_tiled": 8, "naive": 6,
    "sig_triton": 8, "sig_triton_det": 10, "sig_torch_tiled": 8, "sig_naive": 6, "sig_open_clip": 6,
    "sig_siglip_kernel": None,
}  # fmt: skip
# Optional peers: method -> importable module that provides it.
PEER_MODULES = {"sig_open_clip": "open_clip", "sig_siglip_kernel": "siglip_kernel"}
# Dense BF16 tensor-core peaks (TFLOP/s) for the fraction-of-peak column; None for unknown devices.
BF16_PEAK_TFLOPS = {"H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "H200": 989.4, "A100": 312.0}
SCALE = 20.0
SIGMOID_SCALE, SIGMOID_BIAS = 10.0, -10.0


def _peak_for(device_name: str) -> float | None:
    for key, peak in BF16_PEAK_TFLOPS.items():
        if key in device_name:
            return peak
    return None


def make_problem(
    b: int, d: int, device: torch.device, dtype: torch.dtype, seed: int = 0, loss: str = "clip"
) -> dict:
    """Unit-norm random features (queries are noisy copies of their keys, so the loss is not trivial)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    k = torch.nn.functional.normalize(torch.randn(b, d, generator=gen), dim=1)
    q = torch.nn.functional.normalize(k + 0.8 * torch.randn(b, d, generator=gen) / math.sqrt(d) * 4, dim=1)
    return {
        "q": q.to(device=device, dtype=dtype),
        "k": k.to(device=device, dtype=dtype),
        "scale": torch.tensor(SCALE if loss == "clip" else SIGMOID_SCALE, device=device),
        "bias": torch.tensor(SIGMOID_BIAS, device=device),
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


def _leaves(p: dict) -> tuple[torch.Tensor, ...]:
    """Fresh leaf copies of q, k, scale and bias that require grad."""
    return tuple(p[name].detach().requires_grad_() for name in ("q", "k", "scale", "bias"))


def _sigmoid_via_loss(p: dict, backend: str, deterministic: bool = False) -> tuple[torch.Tensor, ...]:
    from hardbatch.losses import sigmoid_loss

    q, k, scale, bias = _leaves(p)
    tile = None if backend == "triton" else _tiled_default_cuda()
    guard = _deterministic() if deterministic else contextlib.nullcontext()
    with guard:
        loss = sigmoid_loss(q, k, scale, bias, backend=backend, tile_size=tile)
        loss.backward()
    return loss.detach(), q.grad, k.grad, scale.grad, bias.grad


def _tiled_default_cuda() -> tuple[int, int]:
    from hardbatch.losses import tiled

    return tiled.DEFAULT_TILE_CUDA


@contextlib.contextmanager
def _deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _materialised_sigmoid(q, k, scale, bias) -> torch.Tensor:
    """SigLIP's loss from the full logit matrix: −Σ log σ(z ⊙ x) / b, z = 2·I − 1."""
    logits = scale * (q @ k.T).to(torch.promote_types(q.dtype, torch.float32)) + bias
    z = 2 * torch.eye(q.shape[0], device=q.device, dtype=logits.dtype) - 1
    return -torch.nn.functional.logsigmoid(z * logits).sum() / q.shape[0]


def _naive_sigmoid(p: dict) -> tuple[torch.Tensor, ...]:
    q, k, scale, bias = _leaves(p)
    loss = _materialised_sigmoid(q, k, scale, bias)
    loss.backward()
    return loss.detach(), q.grad, k.grad, scale.grad, bias.grad


def _fp64_sigmoid(p: dict) -> tuple[torch.Tensor, ...]:
    """Accuracy reference: the materialised sigmoid loss in float64 (small b only)."""
    q, k, scale, bias = (t.double() for t in _leaves(p))
    leaves = [t.detach().requires_grad_() for t in (q, k, scale, bias)]
    loss = _materialised_sigmoid(*leaves)
    loss.backward()
    return (loss.detach(), *(t.grad for t in leaves))


def _open_clip_sigmoid(p: dict) -> tuple[torch.Tensor, ...]:
    from open_clip.loss import SigLipLoss

    q, k, scale, bias = _leaves(p)
    loss = SigLipLoss()(q, k, scale, bias)
    loss.backward()
    return loss.detach(), q.grad, k.grad, scale.grad, bias.grad


def _siglip_kernel_sigmoid(p: dict) -> tuple[torch.Tensor, ...]:
    from siglip_kernel import fused_siglip_loss

    q, k, scale, bias = _leaves(p)
    log_scale = scale.detach().log().requires_grad_()
    loss = fused_siglip_loss(q, k, log_scale, bias)
    loss.backward()
    # d/d log s = s · d/d s: report d/d scale like the other methods.
    return loss.detach(), q.grad, k.grad, log_scale.grad / scale.detach(), bias.grad


def sigmoid_method_fn(name: str, p: dict) -> Callable[[], tuple[torch.Tensor, ...]]:
    if name in ("sig_triton", "sig_triton_det"):
        return lambda: _sigmoid_via_loss(p, "triton", deterministic=name == "sig_triton_det")
    if name == "sig_torch_tiled":
        return lambda: _sigmoid_via_loss(p, "torch")
    if name == "sig_naive":
        return lambda: _naive_sigmoid(p)
    if name == "sig_open_clip":
        return lambda: _open_clip_sigmoid(p)
    if name == "sig_siglip_kernel":
        return lambda: _siglip_kernel_sigmoid(p)
    raise ValueError(name)


def method_fn(name: str, p: dict) -> Callable[[], tuple[torch.Tensor, ...]]:
    if name.startswith("sig_"):
        return sigmoid_method_fn(name, p)
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
    names = ("loss", "dq", "dk", "dscale", "dbias")
    errs = {}
    for name, a, r in zip(names, out, ref):
        a64, r64 = a.detach().double(), r.detach().double()
        errs[name] = float((a64 - r64).abs().max() / r64.abs().max().clamp_min(1e-12))
    return errs


def _skip_reason(name: str, b: int, device: torch.device, args) -> str | None:
    """Why ``name`` is not run at this size (materialised beyond free memory, tiled beyond the cap, peer
    not installed), or None."""
    module = PEER_MODULES.get(name)
    if module is not None and importlib.util.find_spec(module) is None:
        return f"skipped (not installed: {module})"
    if name in ("naive", "sig_naive", "sig_open_clip") and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if naive_bytes(b) > free:
            return f"skipped (needs ~{naive_bytes(b) / 2**30:.0f} GiB)"
    if name in ("torch_tiled", "sig_torch_tiled") and b > args.tiled_max_b:
        return f"skipped (b > --tiled-max-b {args.tiled_max_b})"
    return None


def run_size(b: int, d: int, methods: list[str], device: torch.device, reps: int, args) -> list[dict]:
    p = make_problem(b, d, device, torch.bfloat16, loss=args.loss)
    reference_fn = _fp64_clip if args.loss == "clip" else _fp64_sigmoid
    baseline = LOSSES[args.loss][1]
    rows = []
    reference = None
    for name in methods:
        row = {"b": b, "n": b, "d": d, "method": name}
        reason = _skip_reason(name, b, device, args)
        if reason is not None:
            row["status"] = reason
            rows.append(row)
            print(json.dumps(row), flush=True)
            continue
        try:
            fn = method_fn(name, p)
            row.update(measure(fn, device, reps))
            row["status"] = "ok"
            if b == min(args.sizes) and args.check:
                out = fn()
                if reference is None and b * b * 8 * 6 < 8 * 2**30:
                    reference = reference_fn(p)
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
            factor = EXECUTED_FLOP_FACTOR[name]
            if factor is not None:
                row["executed_tflops"] = factor * b * b * d / (row["ms"] * 1e-3) / 1e12
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = next((r for r in rows if r["method"] == baseline and r["status"] == "ok"), None)
    for row in rows:
        if base is not None and row["status"] == "ok":
            row["time_vs_triton"] = row["ms"] / base["ms"]
            if row.get("peak_mb") and base.get("peak_mb"):
                row["memory_vs_triton"] = row["peak_mb"] / base["peak_mb"]
    return rows


def _header(report: dict) -> list[str]:
    """Title and setup lines of the report for its loss."""
    common = f"Device: {report['device']}; torch {report['torch']}, triton {report['triton']}; bf16 inputs, "
    runs = f"b = n, median of {report['reps']} runs after a warm-up/autotune run."
    if report.get("loss", "clip") == "clip":
        return [
            "# Fused CLIP loss on GPU: Triton vs materialised torch vs torch tiled",
            "",
            common + f"scale {report['scale']}, " + runs,
            "Useful FLOPs = 6·b²·d (model FLOPs); executed = what each method runs "
            "(triton 8·b²·d, triton_det 10·b²·d, tiled 8·b²·d, naive 6·b²·d).",
        ]
    return [
        "# Sigmoid (SigLIP) loss on GPU: Triton vs torch tiles vs materialised torch vs peers",
        "",
        common + f"scale {report['scale']}, bias {report['bias']}, " + runs,
        "Gradients w.r.t. q, k, scale and bias. Useful FLOPs = 6·b²·d; executed = what each method runs "
        "(sig_triton 8·b²·d, sig_triton_det 10·b²·d, tiled 8·b²·d, naive / OpenCLIP 6·b²·d, "
        "siglip-kernel: not counted). Ratios are against sig_triton.",
    ]


def to_markdown(report: dict) -> str:
    peak = report["bf16_peak_tflops"]
    lines = [
        *_header(report),
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


def _write(report: dict, stem: str) -> None:
    from hardbatch.io import atomic_write, write_json

    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / f"{stem}.json", report)
    with atomic_write(RESULTS / f"{stem}.md") as handle:
        handle.write(to_markdown(report))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line; ``--methods`` defaults to every method of ``--loss`` and is checked against them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loss", choices=sorted(LOSSES), default="clip", help="which loss to measure")
    parser.add_argument("--sizes", default="4096,16384,65536,262144")
    parser.add_argument("--dims", default="384,768")
    parser.add_argument("--methods", default=None, help="comma-separated; default: all of --loss")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tiled-max-b", type=int, default=65536, help="skip torch_tiled above this b")
    parser.add_argument("--no-check", dest="check", action="store_false", help="skip the accuracy check")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on any device; writes nothing")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.dims = [int(s) for s in args.dims.split(",")]
    allowed = LOSSES[args.loss][0]
    args.methods = list(allowed) if args.methods is None else [m for m in args.methods.split(",") if m]
    unknown = set(args.methods) - set(allowed)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)} for --loss {args.loss}; choose from {allowed}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dims, methods = args.dims, args.methods
    stem = LOSSES[args.loss][2]
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
        "loss": args.loss,
        "scale": SCALE if args.loss == "clip" else SIGMOID_SCALE,
        "bias": None if args.loss == "clip" else SIGMOID_BIAS,
        "reps": args.reps,
        "bf16_peak_tflops": _peak_for(name),
        "results": [],
    }
    for d in dims:
        for b in args.sizes:
            report["results"].extend(run_size(b, d, methods, device, args.reps, args))
            if not args.smoke:  # after every size, so a run cut short keeps what it measured
                _write(report, stem)
    print(to_markdown(report))
    if args.smoke:
        print("(smoke run: results not written)")
        return 0
    print(f"wrote {RESULTS / (stem + '.json')} and {RESULTS / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
