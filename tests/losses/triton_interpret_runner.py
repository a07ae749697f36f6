"""Run the Triton InfoNCE kernels in Triton's CPU interpreter and compare them with a float64 reference.

``TRITON_INTERPRET=1`` must be set before Triton JIT-decorates the kernels, so the tests run this file in a
subprocess (``python triton_interpret_runner.py``); it prints one JSON object mapping each case name to its
errors. The float64 reference of the kernel contract (:func:`reference_contract`) is importable without
side effects, so in-process tests can check the reference itself against autograd.

Errors reported per case: ``row``/``col``/``pos`` are absolute (log-space values), ``dq``/``dk`` are max
absolute error divided by the reference's max magnitude, ``dscale`` is divided by ``Σ|dS ⊙ (q @ k.T)|``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Case:
    """One interpreter comparison (sizes, dtype, masking and launch-layout knobs)."""

    b: int
    n: int
    d: int
    dtype: str = "float32"
    ids: bool = False
    compute_col: bool = True
    deterministic: bool = False
    tile: int = 16
    scale: float = 1.7
    normalize: bool = False
    row_groups: int | None = None
    fwd_splits: int | None = None
    bwd_splits: int | None = None
    transpose_q: bool = False
    fully_masked_cols: int = 0
    seed: int = 0
    autotune: bool = False  # drive the CUDA host path (autotuner, META grids, reset_to_zero) on CPU


CASES: dict[str, Case] = {
    "edges_fp32": Case(37, 53, 21),
    "ids_masked_cols_groups_splits": Case(
        40, 45, 18, ids=True, fully_masked_cols=2, row_groups=2, fwd_splits=2, bwd_splits=2, seed=1
    ),
    "deterministic_multichunk": Case(65, 40, 40, ids=True, deterministic=True, tile=32, seed=2),
    "tiny_1x1x1": Case(1, 1, 1, seed=3),
    "b3_wide_n_no_col": Case(3, 200, 7, compute_col=False, tile=32, seed=4),
    "single_chunk_atomic_owned": Case(50, 64, 7, bwd_splits=3, seed=5),
    "multichunk_atomic_owned": Case(33, 70, 33, bwd_splits=2, tile=32, seed=6),
    "zero_scale": Case(20, 30, 9, scale=0.0, seed=7),
    "scale100_normalized_strided": Case(48, 48, 24, scale=100.0, normalize=True, transpose_q=True, seed=8),
    "bf16_ids": Case(50, 70, 33, dtype="bfloat16", ids=True, tile=32, seed=9),
    "fp16_deterministic": Case(40, 37, 20, dtype="float16", deterministic=True, seed=10),
    "autotuned_host_path_fast": Case(40, 45, 18, ids=True, autotune=True, tile=0, seed=11),
    "autotuned_host_path_deterministic": Case(
        33, 40, 20, deterministic=True, autotune=True, tile=0, compute_col=True, seed=12
    ),
}

# Tolerances per dtype: fp32 runs exact IEEE dots in the interpreter; bf16/fp16 round dS for the
# gradient matmuls (as on the GPU), so gradients carry the input dtype's relative precision.
TOLERANCES: dict[str, dict[str, float]] = {
    "float32": {"row": 1e-4, "col": 1e-4, "pos": 1e-4, "dq": 1e-5, "dk": 1e-5, "dscale": 1e-5},
    "float16": {"row": 1e-4, "col": 1e-4, "pos": 1e-4, "dq": 3e-3, "dk": 3e-3, "dscale": 1e-4},
    "bfloat16": {"row": 1e-4, "col": 1e-4, "pos": 1e-4, "dq": 2e-2, "dk": 2e-2, "dscale": 1e-4},
}


def make_inputs(case: Case) -> dict[str, torch.Tensor | None]:
    """Deterministic random inputs for ``case`` (q, k in the case dtype; ids/labels int64; g fp32)."""
    gen = torch.Generator().manual_seed(case.seed)
    dtype = getattr(torch, case.dtype)
    q = torch.randn(case.b, case.d, generator=gen)
    k = torch.randn(case.n, case.d, generator=gen)
    if case.normalize:
        q = torch.nn.functional.normalize(q, dim=1)
        k = torch.nn.functional.normalize(k, dim=1)
    usable = case.n - case.fully_masked_cols
    labels = torch.randint(0, usable, (case.b,), generator=gen)
    q_ids = k_ids = None
    if case.ids:
        q_ids = torch.randint(0, 3, (case.b,), generator=gen)
        k_ids = torch.randint(0, 3, (case.n,), generator=gen)
        if case.fully_masked_cols:
            # Every query shares these keys' id and none has them as positive: their columns are all -inf.
            q_ids.zero_()
            k_ids[usable:] = 0
    if case.transpose_q:
        q = q.t().contiguous().t()  # same values, column-major strides
    return {
        "q": q.to(dtype),
        "k": k.to(dtype),
        "scale": torch.tensor(case.scale),
        "labels": labels,
        "q_ids": q_ids,
        "k_ids": k_ids,
        "g_row": torch.rand(case.b, generator=gen),
        "g_col": torch.rand(case.n, generator=gen) if case.compute_col else None,
    }


def reference_contract(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: torch.Tensor,
    labels: torch.Tensor,
    q_ids: torch.Tensor | None,
    k_ids: torch.Tensor | None,
    g_row: torch.Tensor,
    g_col: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """Float64 materialised implementation of the kernel contract (small sizes only: builds b × n).

    Returns row, col, pos, dq, dk, dscale and ``dscale_norm = Σ|dS ⊙ (q @ k.T)|`` (error normaliser).
    """
    q64, k64, s64 = q.double(), k.double(), scale.double()
    b, n = q.shape[0], k.shape[0]
    dots = q64 @ k64.T
    logits = s64 * dots
    is_pos = torch.zeros(b, n, dtype=torch.bool)
    is_pos[torch.arange(b), labels] = True
    valid = torch.ones(b, n, dtype=torch.bool)
    if q_ids is not None and k_ids is not None:
        valid = (q_ids[:, None] != k_ids[None, :]) | is_pos
    logits = logits.masked_fill(~valid, -math.inf)
    row = logits.logsumexp(1)
    col = logits.logsumexp(0)
    pos = logits[torch.arange(b), labels]
    delta = is_pos.double()
    grad = g_row.double()[:, None] * (torch.exp(logits - row[:, None]) - delta)
    if g_col is not None:
        # Fully masked columns have col = -inf; their entries are masked anyway (zeroed below).
        soft_col = torch.exp(logits - torch.where(torch.isfinite(col), col, 0.0)[None, :])
        grad = grad + g_col.double()[None, :] * (soft_col - delta)
    grad = torch.where(valid, grad, 0.0)
    return {
        "row": row,
        "col": col,
        "pos": pos,
        "dq": s64 * grad @ k64,
        "dk": s64 * grad.T @ q64,
        "dscale": (grad * dots).sum(),
        "dscale_norm": (grad * dots).abs().sum(),
    }


def _rel(err: torch.Tensor, ref: torch.Tensor) -> float:
    return float(err.abs().max() / ref.abs().max().clamp_min(1e-12)) if ref.numel() else 0.0


@contextlib.contextmanager
def cuda_host_path(kernels):
    """Make the kernels take their CUDA branch (autotuned launch) while still running in the interpreter.

    The autotuner gets two tiny configs per kernel (different block sizes, so tuning really re-runs the
    kernels and ``reset_to_zero`` / the META-dependent grids matter) and a wall-clock benchmark.
    """
    import triton

    def configs(blocks):
        return lambda: [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_D": 16}) for m, n in blocks]

    def timed(kernel_call, quantiles):
        began = time.perf_counter()
        kernel_call()
        elapsed = time.perf_counter() - began
        return [elapsed] * len(quantiles)

    def with_cpu_bench(build):
        def wrapper(*args):
            tuner, kept = build(*args)
            tuner._do_bench = timed
            return tuner, kept

        return wrapper

    patches = {
        "interpreter_enabled": lambda: False,
        "triton_supported": lambda tensor: True,
        "_hopper_forward_configs": configs([(16, 16), (32, 16)]),
        "_hopper_backward_configs": configs([(16, 32), (32, 16)]),
        "_autotuned_forward": with_cpu_bench(kernels._autotuned_forward.__wrapped__),
        "_autotuned_backward": with_cpu_bench(kernels._autotuned_backward.__wrapped__),
    }
    saved = {name: getattr(kernels, name) for name in patches}
    for name, value in patches.items():
        setattr(kernels, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(kernels, name, value)


def run_case(kernels, case: Case, device: str = "cpu") -> dict[str, float]:
    """Run forward + backward for ``case`` and return its errors vs the float64 reference.

    ``device="cpu"`` runs in the interpreter (``autotune`` cases drive the CUDA host path there);
    ``device="cuda"`` runs the compiled kernels on the GPU, always through the real autotuner.
    """
    if case.autotune and device == "cpu":
        with cuda_host_path(kernels):
            return _run_case(kernels, case, device)
    return _run_case(kernels, case, device)


def _on(device: str, x: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor | None]:
    return {name: None if t is None else t.to(device) for name, t in x.items()}


def _run_case(kernels, case: Case, device: str = "cpu") -> dict[str, float]:
    cpu = make_inputs(case)
    x = _on(device, cpu)
    if case.transpose_q:  # .to(device) keeps strides on CPU only; re-create the column-major layout
        x["q"] = x["q"].t().contiguous().t()
    start = time.perf_counter()
    row, col, pos = kernels.fused_lse_forward(
        x["q"], x["k"], x["scale"], x["labels"], x["q_ids"], x["k_ids"], case.compute_col, case.tile, case.tile,
        num_row_groups=case.row_groups, num_key_splits=case.fwd_splits,
    )  # fmt: skip
    dq, dk, dscale = kernels.fused_backward(
        x["q"], x["k"], x["scale"], x["labels"], x["q_ids"], x["k_ids"], row, col, x["g_row"], x["g_col"],
        case.tile, case.tile, deterministic=case.deterministic, num_key_splits=case.bwd_splits,
    )  # fmt: skip
    if device != "cpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    row, col, pos, dq, dk, dscale = (None if t is None else t.cpu() for t in (row, col, pos, dq, dk, dscale))
    x = cpu
    ref = reference_contract(
        x["q"], x["k"], x["scale"], x["labels"], x["q_ids"], x["k_ids"], x["g_row"], x["g_col"]
    )
    out: dict[str, float] = {"seconds": seconds}
    out["row"] = float((row.double() - ref["row"]).abs().max())
    out["pos"] = float((pos.double() - ref["pos"]).abs().max())
    if case.compute_col:
        finite = torch.isfinite(ref["col"])
        out["col"] = float((col.double()[finite] - ref["col"][finite]).abs().max()) if finite.any() else 0.0
        # Fully masked columns must come back as exactly -inf (not NaN, not a finite value).
        out["col_masked_ok"] = float(bool((col[~finite] == -math.inf).all()))
        out["col_masked_count"] = float((~finite).sum())
    else:
        out["col"] = 0.0 if col is None else math.inf
    out["dq"] = _rel(dq.double() - ref["dq"], ref["dq"])
    out["dk"] = _rel(dk.double() - ref["dk"], ref["dk"])
    out["dscale"] = float((dscale.double() - ref["dscale"]).abs() / ref["dscale_norm"].clamp_min(1e-12))
    if case.seed in CROSS_CHECK_SEEDS:
        out.update(_cross_check_tiled(x, case, (row, col, pos, dq, dk, dscale)))
    out["shapes_ok"] = float(
        dq.shape == x["q"].shape and dk.shape == x["k"].shape and dscale.dim() == 0
        and dq.dtype == dk.dtype == dscale.dtype == torch.float32
    )  # fmt: skip
    return out


# Cases (by seed) also compared with the torch tiled backend, the other implementation of the contract.
CROSS_CHECK_SEEDS = (0, 1)


def _cross_check_tiled(x: dict, case: Case, ours: tuple) -> dict[str, float]:
    """Max |triton − tiled| per output (relative for gradients); empty when tiled.py is not importable."""
    try:
        from hardbatch.losses import tiled
    except ImportError:
        return {}
    args = (x["q"], x["k"], x["scale"], x["labels"], x["q_ids"], x["k_ids"])
    row, col, pos = tiled.fused_lse_forward(*args, case.compute_col, case.tile, case.tile)
    dq, dk, dscale = tiled.fused_backward(*args, row, col, x["g_row"], x["g_col"], case.tile, case.tile)
    theirs = (row, col, pos, dq, dk, dscale)
    out = {}
    for name, a, b in zip(("row", "col", "pos", "dq", "dk", "dscale"), ours, theirs):
        a64, b64 = a.double(), b.double()
        same_inf = torch.isinf(a64) & torch.isinf(b64) & (a64 == b64)
        diff = torch.where(same_inf, 0.0, a64 - b64).abs()
        norm = max(1.0, float(b64[torch.isfinite(b64)].abs().max())) if name.startswith("d") else 1.0
        out[f"tiled_{name}"] = float(diff.max()) / norm if diff.numel() else 0.0
    return out


def main(names: list[str]) -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    warnings.filterwarnings("ignore")  # numpy log(0) = -inf warnings are expected (masked / empty sums)
    torch.set_num_threads(1)
    from hardbatch.losses import triton_kernels

    selected = names or list(CASES)
    results = {name: run_case(triton_kernels, CASES[name]) for name in selected}
    results["_cases"] = {name: asdict(CASES[name]) for name in selected}  # type: ignore[assignment]
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
