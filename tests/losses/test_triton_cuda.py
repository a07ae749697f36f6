"""Triton InfoNCE kernels compiled for a real GPU (skipped without CUDA; CI has none, the GPU runs do).

The interpreter tests (test_triton_interpret.py) check the kernels' arithmetic on the CPU; these check what
only a GPU shows: the compiled code (tensor-core dots, autotuned block sizes, atomics), the autograd
wiring of ``info_nce(backend="triton")`` at sizes the interpreter cannot reach, and the linear memory.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from triton_interpret_runner import CASES, TOLERANCES, run_case  # noqa: E402

from hardbatch.losses import info_nce, reference_info_nce  # noqa: E402
from hardbatch.losses.info_nce import resolve_backend  # noqa: E402


@pytest.fixture(scope="module")
def kernels():
    from hardbatch.losses import triton_kernels

    return triton_kernels


@pytest.mark.parametrize("name", sorted(CASES))
def test_compiled_kernels_match_float64_reference(kernels, name: str) -> None:
    case = CASES[name]
    errors = run_case(kernels, case, device="cuda")
    assert errors["shapes_ok"] == 1.0
    for quantity, tol in TOLERANCES[case.dtype].items():
        assert errors[quantity] <= tol, f"{name}: {quantity} error {errors[quantity]:.3g} > {tol:g}"
    if case.compute_col:
        assert errors["col_masked_ok"] == 1.0, "fully masked columns must have col_lse == -inf exactly"


def _loss_and_grads(fn, q, k, labels, **kw):
    q = q.clone().requires_grad_()
    k = k.clone().requires_grad_()
    scale = torch.tensor(20.0, device=q.device, requires_grad=True)
    loss = fn(q, k, labels, scale=scale, **kw)
    weights = torch.linspace(-1, 2, loss.numel(), device=q.device).reshape(loss.shape).to(loss.dtype)
    dq, dk, dscale = torch.autograd.grad(loss, [q, k, scale], weights)
    return [t.double() for t in (loss, dq, dk, dscale)]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize(
    ("dtype", "b", "n", "d", "symmetric", "masked", "reduction"),
    [
        (torch.float32, 1000, 3001, 384, True, True, "mean"),
        (torch.float32, 777, 777, 97, False, False, "none"),
        (torch.bfloat16, 2049, 4099, 384, True, False, "sum"),
        (torch.bfloat16, 513, 1025, 768, True, True, "mean"),
        (torch.float16, 300, 301, 64, True, False, "mean"),
        (torch.float32, 1, 1, 1, True, False, "mean"),
    ],
)
def test_info_nce_triton_matches_reference_on_gpu(dtype, b, n, d, symmetric, masked, reduction) -> None:
    gen = torch.Generator().manual_seed(b * 7 + n)
    q = torch.nn.functional.normalize(torch.randn(b, d, generator=gen), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=-1)
    labels = torch.randint(0, n, (b,), generator=gen)  # repeats: shared positive keys
    kw: dict = {"symmetric": symmetric, "reduction": reduction}
    if masked:
        ids = torch.randint(0, 50, (n,), generator=gen)
        kw.update(query_ids=ids[labels].cuda(), key_ids=ids.cuda())
    q, k, labels = q.cuda().to(dtype), k.cuda().to(dtype), labels.cuda()
    got = _loss_and_grads(lambda *a, **x: info_nce(*a, backend="triton", **x), q, k, labels, **kw)
    want = _loss_and_grads(reference_info_nce, q.float(), k.float(), labels, **kw)
    limit = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]
    for quantity, a, ref in zip(("loss", "dq", "dk", "dscale"), got, want):
        assert _relative(a, ref) <= limit, f"{quantity}: relative error {_relative(a, ref):.3g} > {limit}"


def test_auto_backend_picks_triton_for_cuda_tensors() -> None:
    name, _ = resolve_backend("auto", torch.device("cuda"), torch.zeros(2, 2, device="cuda"))
    assert name == "triton"


def test_memory_is_linear_in_the_batch() -> None:
    """b = n = 32768 bf16: the b × n fp32 logits alone would take 4 GiB.

    What is linear: fp32 dq/dk (8·b·d bytes) and their bf16 casts (4·b·d); scratch is O(b + n).
    """
    b, d = 32768, 256
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(b, d, device="cuda", generator=gen), dim=-1).bfloat16()
    k = torch.nn.functional.normalize(torch.randn(b, d, device="cuda", generator=gen), dim=-1).bfloat16()
    q.requires_grad_()
    k.requires_grad_()
    info_nce(q, k, backend="triton").backward()  # warm-up: autotuning allocates its own scratch
    q.grad = k.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = info_nce(q, k, backend="triton")
    loss.backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert torch.isfinite(loss)
    bound = 16 * b * d + 16 * 2**20  # 144 MiB, vs 4096 MiB for the logits alone
    assert extra < bound, f"fused loss used {extra / 2**20:.1f} MiB above its inputs"


def test_deterministic_backward_is_bitwise_reproducible(kernels) -> None:
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1500, 128, generator=gen).cuda().bfloat16()
    k = torch.randn(2500, 128, generator=gen).cuda().bfloat16()
    scale, labels = torch.tensor(5.0, device="cuda"), torch.arange(1500, device="cuda")
    row, col, _ = kernels.fused_lse_forward(q, k, scale, labels, None, None, True, None, None)
    g_row = torch.rand(1500, device="cuda")
    g_col = torch.rand(2500, device="cuda")

    def grads():
        return kernels.fused_backward(
            q, k, scale, labels, None, None, row, col, g_row, g_col, None, None, deterministic=True
        )

    first, second = grads(), grads()
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_triton_agrees_with_torch_tiled_backend_at_scale() -> None:
    """b = n = 16384, d = 384 (too big for the float64 reference): the two backends agree."""
    gen = torch.Generator().manual_seed(5)
    q = torch.nn.functional.normalize(torch.randn(16384, 384, generator=gen), dim=-1).cuda()
    k = torch.nn.functional.normalize(torch.randn(16384, 384, generator=gen), dim=-1).cuda()
    labels = torch.arange(16384, device="cuda")
    triton_out = _loss_and_grads(lambda *a, **x: info_nce(*a, backend="triton", **x), q, k, labels)
    torch_out = _loss_and_grads(lambda *a, **x: info_nce(*a, backend="torch", **x), q, k, labels)
    for quantity, a, ref in zip(("loss", "dq", "dk", "dscale"), triton_out, torch_out):
        assert _relative(a, ref) <= 1e-4, f"{quantity}: {_relative(a, ref):.3g}"
