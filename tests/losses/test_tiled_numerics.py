"""Extreme logit ranges: the one-exponential tile passes must fall back where their shortcuts would underflow.

Forward: column sums come from exp(S − row_max) reweighted by e^{row_max − M}; a column whose entries all
lie ~200 below the tile's largest logit would underflow to 0 (loss +inf or NaN). Backward: the column softmax
reuses the row one through e^{r_i − R}·e^{R − c_j}, which overflows for such columns. Both must be exact.
"""

from __future__ import annotations

import torch

from hardbatch.losses import info_nce, reference_info_nce


def _extreme_case():
    # Key 0 is aligned with query 0 (logit +100); keys 1..3 are anti-aligned with every query (≈ −100),
    # so columns 1..3 sit ~200 below the tile maximum. Query/key 1..3 are the positives of those columns.
    d = 4
    q = torch.zeros(4, d, dtype=torch.float64)
    k = torch.zeros(5, d, dtype=torch.float64)
    q[:, 0] = 1.0
    k[0, 0] = 1.0
    k[1:4, 0] = -1.0
    k[4, 0] = 0.2  # one ordinary column
    q[1:, 1] = 0.05  # small variations so the rows differ
    k[1:4, 1] = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    return torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(k, dim=1)


def test_far_below_columns_are_exact_in_forward_and_backward():
    q64, k64 = _extreme_case()
    labels = torch.tensor([0, 1, 2, 3])
    results = []
    for fn, dtype, kw in (
        (reference_info_nce, torch.float64, {}),
        (info_nce, torch.float32, {"tile_size": (4, 5)}),
        (info_nce, torch.float32, {"tile_size": (2, 2)}),
    ):
        q = q64.detach().to(dtype).clone().requires_grad_()
        k = k64.detach().to(dtype).clone().requires_grad_()
        loss = fn(q, k, labels, scale=100.0, reduction="none", **kw)
        loss.sum().backward()
        results.append((loss.detach().double(), q.grad.double(), k.grad.double()))
    want = results[0]
    assert torch.isfinite(want[0]).all()
    for got in results[1:]:
        for g, w in zip(got, want):
            assert torch.isfinite(g).all()
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
