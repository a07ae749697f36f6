"""Triton sigmoid (SigLIP) kernels in Triton's CPU interpreter: values and gradients vs float64 and torch tiles.

Kernel executions need ``TRITON_INTERPRET=1`` before Triton decorates them, so they happen in subprocesses
running ``triton_sigmoid_runner.py`` (one for the single-process cases, ~10–30 s; one 2-rank gloo run of
the gather and ring modes, ~15–25 s); the tests below read their JSON. Host-side checks (validation,
backend resolution) run in-process without launching a kernel.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from triton_sigmoid_runner import E2E_CASES, KERNEL_CASES

from hardbatch.errors import ConfigError
from hardbatch.losses import sigmoid_loss
from hardbatch.losses.info_nce import resolve_backend

RUNNER = Path(__file__).with_name("triton_sigmoid_runner.py")
ENV = dict(os.environ, TRITON_INTERPRET="1", HARDBATCH_PROGRESS="0", OMP_NUM_THREADS="1")

# fp32: exact IEEE dots in the interpreter. bf16 / fp16: the loss comes back in the input dtype and dx is
# rounded to it for the gradient matmuls (as on the GPU; fp16 with the per-tile rescale); scale and bias
# gradients stay fp32-exact.
E2E_TOLERANCES = {
    torch.float32: {"loss": 1e-5, "dq": 1e-5, "dk": 1e-5, "dscale": 1e-5, "dbias": 1e-5},
    torch.bfloat16: {"loss": 8e-3, "dq": 2e-2, "dk": 2e-2, "dscale": 1e-4, "dbias": 1e-4},
    torch.float16: {"loss": 1e-3, "dq": 3e-3, "dk": 3e-3, "dscale": 1e-4, "dbias": 1e-4},
}
KERNEL_TOLERANCE = 1e-5  # Triton vs torch tiles, both fp32 (relative to the largest reference entry)


def _run(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(RUNNER), *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, f"interpreter runner failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def results() -> dict:
    return _run()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(E2E_CASES))
def test_sigmoid_loss_triton_backend_matches_float64_reference(results: dict, name: str) -> None:
    errors = results[name]
    assert errors["finite"] == 1.0 and errors["dtypes_ok"] == 1.0, errors
    for quantity, tol in E2E_TOLERANCES[E2E_CASES[name][0]].items():
        assert errors[quantity] <= tol, f"{name}: {quantity} relative error {errors[quantity]:.3g} > {tol:g}"
    if E2E_CASES[name][-1]:  # deterministic backward: two runs agree bit for bit
        assert errors["bitwise_repeat"] == 1.0


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "name",
    [*sorted(KERNEL_CASES), "autotuned_kernel_ring_labels_ids_d24", "autotuned_kernel_deterministic_ids_d24"],
)
def test_triton_tiles_agree_with_torch_tiles(results: dict, name: str) -> None:
    """Ring labels (−1), foreign blocks, key splits, one/many d chunks, both backward modes; ``autotuned_*``
    drive the CUDA host path (autotuner, META grids, reset_to_zero) on CPU."""
    errors = results[name]
    assert errors["shapes_ok"] == 1.0, "outputs must be fp32 with the input shapes"
    for quantity in ("row", "dq", "dk", "dscale", "dbias"):
        assert errors[quantity] <= KERNEL_TOLERANCE, f"{name}: {quantity} differs by {errors[quantity]:.3g}"


@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_gather_and_ring_run_the_triton_tiles(tmp_path: Path) -> None:
    """2 gloo ranks, sigmoid_loss(backend="triton"): gather (equal shards) and ring (unequal, shared
    positive, id collisions across ranks) equal the single-process reference (test_ring.py's checks)."""
    assert _run("--distributed", str(tmp_path)) == {"ok": 1}


# ------------------------------------------------------------------------------ in-process host checks


@pytest.fixture(scope="module")
def kernels():
    return importlib.import_module("hardbatch.losses.triton_sigmoid")


def test_auto_backend_picks_torch_tiles_off_cuda_and_for_unsupported_dtypes() -> None:
    assert resolve_backend("auto", torch.device("cpu"), loss="sigmoid_loss")[1].__name__.endswith(
        "sigmoid_tiled"
    )
    name, module = resolve_backend("triton", torch.device("cpu"), loss="sigmoid_loss")
    assert name == "triton" and module.__name__.endswith("triton_sigmoid")
    if torch.cuda.is_available():  # pragma: no cover - GPU machines
        cuda = torch.device("cuda")
        double = torch.zeros(2, 2, device=cuda, dtype=torch.float64)
        assert resolve_backend("auto", cuda, (double, double), loss="sigmoid_loss")[0] == "torch"
        mixed = (torch.zeros(2, 2, device=cuda), torch.zeros(2, 2, device=cuda, dtype=torch.bfloat16))
        assert resolve_backend("auto", cuda, mixed, loss="sigmoid_loss")[0] == "torch"


def test_sigmoid_loss_rejects_unknown_backend() -> None:
    with pytest.raises(ConfigError, match="backend"):
        sigmoid_loss(torch.randn(3, 4), torch.randn(3, 4), 1.0, 0.0, backend="cuda-magic")


def test_cpu_tensors_without_interpreter_are_refused(kernels) -> None:
    if kernels.interpreter_enabled():
        pytest.skip("TRITON_INTERPRET is set in this process")
    q, k = torch.randn(4, 3), torch.randn(5, 3)
    with pytest.raises(ConfigError, match="CUDA"):
        kernels.sigmoid_forward(q, k, torch.tensor(1.0), torch.tensor(0.0), torch.arange(4), None, None)
    with pytest.raises(ConfigError, match="CUDA"):
        sigmoid_loss(q, k, 1.0, 0.0, backend="triton")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bias": torch.zeros(2)}, "bias must be a scalar"),
        ({"labels": torch.tensor([0, 1, 7, 2])}, r"labels\[2\] = 7"),
        ({"k": torch.randn(5, 3).double()}, "same dtype"),
        ({"g_row": torch.ones(3)}, r"g_row must have shape \(4,\)"),
    ],
)
def test_bad_kernel_inputs_raise_clear_errors(kernels, change: dict, message: str) -> None:
    args = {
        "q": torch.randn(4, 3),
        "k": torch.randn(5, 3),
        "scale": torch.tensor(1.0),
        "bias": torch.tensor(0.0),
        "labels": torch.arange(4),
        "q_ids": None,
        "k_ids": None,
        "g_row": torch.ones(4),
        **change,
    }
    with pytest.raises(ConfigError, match=message):
        kernels.sigmoid_backward(**args)


def test_flop_accounting_is_the_infonce_tile_walk(kernels) -> None:
    b, n, d = 1000, 2000, 384
    assert kernels.forward_flops(b, n, d) + kernels.backward_flops(b, n, d) == 8 * b * n * d


# ------------------------------------------------------------------------ the GPU benchmark's command line


@pytest.fixture(scope="module")
def bench_loss_gpu():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_loss_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_loss_gpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_parses_the_sigmoid_comparison(bench_loss_gpu) -> None:
    args = bench_loss_gpu.parse_args(["--loss", "sigmoid", "--sizes", "16384,65536", "--dims", "768"])
    assert args.methods == list(bench_loss_gpu.SIGMOID_METHODS) and args.sizes == [16384, 65536]
    assert {"sig_triton", "sig_torch_tiled", "sig_naive", "sig_open_clip", "sig_siglip_kernel"} <= set(
        args.methods
    )
    assert bench_loss_gpu.parse_args([]).methods == list(bench_loss_gpu.METHODS)  # CLIP stays the default
    with pytest.raises(SystemExit):
        bench_loss_gpu.parse_args(["--loss", "sigmoid", "--methods", "triton"])  # a CLIP method
    if not torch.cuda.is_available():
        assert bench_loss_gpu.main(["--loss", "sigmoid"]) == 2  # no figures without a GPU
