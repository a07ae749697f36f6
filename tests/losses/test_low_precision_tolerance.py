"""Low-precision info_nce against a float64 reference on the same (already rounded) inputs.

The tiled loss accumulates in fp32 and rounds only its results to the input dtype, so its error relative
to float64 is about one rounding of the output: ~5e-4 for fp16, ~4e-3 for bf16. The tolerances below are
relative (Frobenius norm of the error over the norm of the answer), per dtype, so that an implementation
that loses precision in between — e.g. a log-sum-exp rounded to the input dtype and re-used in the
backward pass, which shifts every softmax weight by ``lse · eps`` — fails, instead of hiding behind an
absolute tolerance of a few percent of the largest value.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hardbatch.losses import info_nce, reference_info_nce, stacked_keys

# Relative error budgets: a few output roundings (unit roundoff 2^-11 for fp16, 2^-8 for bf16).
RELATIVE_TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 1e-5}


def _inputs(dtype, b: int, d: int, negatives: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    query = F.normalize(torch.randn(b, d, generator=gen), dim=-1)
    positive = F.normalize(query + 0.5 * torch.randn(b, d, generator=gen), dim=-1)
    columns = [F.normalize(torch.randn(b, d, generator=gen), dim=-1) for _ in range(negatives)]
    keys, labels = stacked_keys(positive, columns)
    return query.to(dtype), keys.to(dtype), labels


def _loss_and_grads(fn, query, keys, labels, scale, **kwargs):
    query = query.detach().clone().requires_grad_()
    keys = keys.detach().clone().requires_grad_()
    scale_t = torch.tensor(scale, dtype=torch.float64 if query.dtype == torch.float64 else torch.float32)
    scale_t.requires_grad_()
    loss = fn(query, keys, labels, scale=scale_t, **kwargs)
    return (loss.detach(), *torch.autograd.grad(loss, [query, keys, scale_t]))


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).norm() / want.norm().clamp_min(1e-30))


@pytest.mark.parametrize(
    ("dtype", "b", "d", "negatives", "symmetric", "scale"),
    [
        pytest.param(torch.float16, 64, 32, 1, False, 50.0, id="fp16-asym-scale50"),
        pytest.param(torch.float16, 33, 16, 2, True, 100.0, id="fp16-sym-scale100"),
        pytest.param(torch.bfloat16, 64, 32, 1, False, 50.0, id="bf16-asym-scale50"),
        pytest.param(torch.bfloat16, 129, 48, 1, True, 100.0, id="bf16-sym-scale100"),
        pytest.param(torch.float32, 65, 32, 1, True, 20.0, id="fp32-sym"),
    ],
)
def test_relative_error_per_dtype(dtype, b, d, negatives, symmetric, scale):
    query, keys, labels = _inputs(dtype, b, d, negatives, seed=b)
    ours = _loss_and_grads(info_nce, query, keys, labels, scale, symmetric=symmetric, tile_size=(16, 24))
    want = _loss_and_grads(
        reference_info_nce, query.double(), keys.double(), labels, scale, symmetric=symmetric
    )
    for name, got, expected in zip(("loss", "dq", "dk", "dscale"), ours, want):
        assert torch.isfinite(got).all(), name
        error = _relative_error(got, expected)
        assert error < RELATIVE_TOLERANCE[dtype], f"{name}: relative error {error:.2e}"
