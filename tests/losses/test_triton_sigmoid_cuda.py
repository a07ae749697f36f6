"""Triton sigmoid (SigLIP) kernels compiled for a real GPU (skipped without CUDA; CI has none).

The interpreter tests (test_triton_sigmoid_interpret.py) check the kernels' arithmetic on the CPU; these
check what only a GPU shows: the compiled code (tensor-core dots, approximate exp, autotuned blocks,
atomics) at sizes the interpreter cannot reach, bitwise reproducibility of the deterministic backward,
agreement with the torch tiles at scale and the linear memory. Not yet run on a GPU.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from triton_sigmoid_runner import E2E_CASES, KERNEL_CASES, run_e2e, run_kernel  # noqa: E402

from hardbatch.losses import reference_sigmoid_loss, sigmoid_loss  # noqa: E402
from hardbatch.losses.info_nce import resolve_backend  # noqa: E402

# The interpreter's tolerances (test_triton_sigmoid_interpret.py), loosened where compiled code differs:
# exp is ex2.approx (≈ 2 ulp) and fp32 dots are IEEE only under matmul precision "highest" (set below).
E2E_TOLERANCES = {
    torch.float32: {"loss": 1e-4, "dq": 1e-4, "dk": 1e-4, "dscale": 1e-4, "dbias": 1e-4},
    torch.bfloat16: {"loss": 8e-3, "dq": 2e-2, "dk": 2e-2, "dscale": 1e-3, "dbias": 1e-3},
    torch.float16: {"loss": 1e-3, "dq": 3e-3, "dk": 3e-3, "dscale": 1e-3, "dbias": 1e-3},
}
KERNEL_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def kernels():
    from hardbatch.losses import triton_sigmoid

    return triton_sigmoid


@pytest.mark.parametrize("name", sorted(E2E_CASES))
def test_compiled_sigmoid_loss_matches_float64_reference(name: str) -> None:
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        errors = run_e2e(name, device="cuda")
    finally:
        torch.set_float32_matmul_precision(previous)
    assert errors["finite"] == 1.0 and errors["dtypes_ok"] == 1.0, errors
    for quantity, tol in E2E_TOLERANCES[E2E_CASES[name][0]].items():
        assert errors[quantity] <= tol, f"{name}: {quantity} error {errors[quantity]:.3g}"
    if E2E_CASES[name][-1]:
        assert errors["bitwise_repeat"] == 1.0


@pytest.mark.parametrize("name", sorted(KERNEL_CASES))
def test_compiled_tiles_agree_with_torch_tiles(kernels, name: str) -> None:
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        errors = run_kernel(name, kernels, autotuned=True, device="cuda")
    finally:
        torch.set_float32_matmul_precision(previous)
    assert errors["shapes_ok"] == 1.0
    for quantity in ("row", "dq", "dk", "dscale", "dbias"):
        assert errors[quantity] <= KERNEL_TOLERANCE, f"{name}: {quantity} {errors[quantity]:.3g}"


def _loss_and_grads(fn, q, k, **kw):
    q, k = q.clone().requires_grad_(), k.clone().requires_grad_()
    scale = torch.tensor(10.0, device=q.device, requires_grad=True)
    bias = torch.tensor(-10.0, device=q.device, requires_grad=True)
    loss = fn(q, k, scale, bias, **kw)
    weights = torch.linspace(-1, 2, loss.numel(), device=q.device).reshape(loss.shape).to(loss.dtype)
    return [t.double() for t in torch.autograd.grad(loss, [q, k, scale, bias], weights)] + [loss.double()]


@pytest.mark.parametrize(
    ("dtype", "b", "n", "d", "masked", "reduction"),
    [
        (torch.float32, 1000, 3001, 384, True, "mean"),
        (torch.bfloat16, 2049, 4099, 384, False, "sum"),
        (torch.bfloat16, 513, 1025, 768, True, "none"),
        (torch.float16, 300, 301, 64, True, "mean"),
    ],
)
def test_sigmoid_loss_triton_matches_reference_on_gpu(dtype, b, n, d, masked, reduction) -> None:
    gen = torch.Generator().manual_seed(b + n)
    q = torch.nn.functional.normalize(torch.randn(b, d, generator=gen), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=-1)
    labels = torch.randint(0, n, (b,), generator=gen)
    kw: dict = {"labels": labels.cuda(), "reduction": reduction}
    if masked:
        ids = torch.randint(0, 50, (n,), generator=gen)
        kw.update(query_ids=ids[labels].cuda(), key_ids=ids.cuda())
    q, k = q.cuda().to(dtype), k.cuda().to(dtype)
    got = _loss_and_grads(lambda *a, **x: sigmoid_loss(*a, backend="triton", **x), q, k, **kw)
    want = _loss_and_grads(reference_sigmoid_loss, q.double(), k.double(), **kw)
    limit = {torch.float32: 1e-3, torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]  # fp32: TF32 dots
    for quantity, a, ref in zip(("dq", "dk", "dscale", "dbias", "loss"), got, want):
        error = float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
        assert error <= limit, f"{quantity}: relative error {error:.3g} > {limit}"


def test_auto_backend_picks_triton_for_cuda_tensors() -> None:
    x = torch.zeros(2, 2, device="cuda", dtype=torch.bfloat16)
    assert resolve_backend("auto", x.device, (x, x), loss="sigmoid_loss")[0] == "triton"


def test_deterministic_backward_is_bitwise_reproducible(kernels) -> None:
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1500, 128, generator=gen).cuda().bfloat16()
    k = torch.randn(2500, 128, generator=gen).cuda().bfloat16()
    scale, bias = torch.tensor(5.0, device="cuda"), torch.tensor(-3.0, device="cuda")
    labels, g_row = torch.arange(1500, device="cuda"), torch.rand(1500, device="cuda")

    def grads():
        return kernels.sigmoid_backward(q, k, scale, bias, labels, None, None, g_row, deterministic=True)

    for a, b in zip(grads(), grads()):
        assert torch.equal(a, b)


def test_triton_agrees_with_torch_tiles_at_scale() -> None:
    """b = n = 16384, d = 384 (too big for the float64 reference): the two backends agree."""
    gen = torch.Generator().manual_seed(5)
    q = torch.nn.functional.normalize(torch.randn(16384, 384, generator=gen), dim=-1).cuda()
    k = torch.nn.functional.normalize(torch.randn(16384, 384, generator=gen), dim=-1).cuda()
    ours = _loss_and_grads(lambda *a, **x: sigmoid_loss(*a, backend="triton", **x), q, k)
    theirs = _loss_and_grads(lambda *a, **x: sigmoid_loss(*a, backend="torch", **x), q, k)
    for quantity, a, ref in zip(("dq", "dk", "dscale", "dbias", "loss"), ours, theirs):
        error = float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
        assert error <= 1e-3, f"{quantity}: {error:.3g}"  # TF32 dots on the Triton side


def test_memory_is_linear_in_the_batch() -> None:
    """b = n = 32768, d = 64, bf16 (the issue's size): the b × n fp32 logits alone would take 4 GiB.

    What is linear: fp32 dq / dk (8·b·d bytes), their bf16 casts (4·b·d) and an (S, b) fp32 row buffer.
    """
    b, d = 32768, 64
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(b, d, device="cuda", generator=gen), dim=-1).bfloat16()
    k = torch.nn.functional.normalize(torch.randn(b, d, device="cuda", generator=gen), dim=-1).bfloat16()
    q.requires_grad_()
    k.requires_grad_()
    sigmoid_loss(q, k, 10.0, -10.0, backend="triton").backward()  # warm-up: autotuning allocates scratch
    q.grad = k.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = sigmoid_loss(q, k, 10.0, -10.0, backend="triton")
    loss.backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert torch.isfinite(loss)
    assert extra < 64 * 2**20, f"sigmoid loss used {extra / 2**20:.1f} MiB above its inputs"
