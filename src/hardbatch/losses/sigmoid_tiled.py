"""PyTorch tile kernels of the sigmoid (SigLIP) loss: never materialise the b × n logits.

The CPU backend and the fallback of :func:`hardbatch.losses.sigmoid_loss`; ``triton_sigmoid.py`` implements
the same two functions with fused Triton kernels for CUDA.

With ``x_ij = scale · q_i·k_j + bias`` and ``z_ij = +1`` for query i's positive ``labels[i]``, −1 otherwise,
the per-query loss is ``Σ_j −log σ(z_ij·x_ij)`` over the unmasked keys. Because
``−log σ(−x) = softplus(x)`` and ``−log σ(x) = softplus(x) − x``, it is

    row_i = Σ_j softplus(x_ij) − x_{i, labels[i]},

and its derivative is ``∂row_i/∂x_ij = σ(x_ij) − [j == labels[i]]`` (0 where masked). Masked entries
(``q_ids[i] == k_ids[j]`` and ``j != labels[i]``) are set to −inf, where softplus and σ are exactly 0.
A label of −1 (or any index outside ``[0, n)``) means "no positive in this key block" (used by the ring).

Executed work: forward one (tile_b × tile_n × d) matmul per tile, backward three (recompute + two
gradient matmuls), i.e. 8·b·n·d FLOPs, plus ≈3·b·n transcendental ops (exp + log1p forward, σ backward).
Memory: the inputs, O((b + n)·d) fp32 gradient accumulators and two fp32 tile buffers of tile_b × tile_n.

Precision: as the InfoNCE tiles (:mod:`hardbatch.losses.tiled`): bf16 inputs run the tiles' matmuls in bf16
where :func:`hardbatch.device.fast_bf16_matmul` says so (fp32 accumulators, every positive logit from an
fp32 dot product, the gradient tile rounded to bf16 for the two gradient matmuls; one more bf16 tile and
(b,) fp32 of memory), else they are upcast; softplus and σ are always fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hardbatch.losses.tiled import (
    _accumulate_tile_gradients,
    _exact_positives,
    _low_precision_logits,
    _mask_tile,
    _positive_position,
    _scaled_query_tile,
    _tile_buffer,
    tile_dtype,
)

__all__ = ["sigmoid_backward", "sigmoid_forward"]


@dataclass
class _LowTiles:
    """bf16-tile state (:func:`hardbatch.losses.tiled.tile_dtype`): the bf16 product scratch of one tile,
    every row's fp32 positive logit ``scale·q_i·k_labels[i]`` (b,) and the (1, 1) fp32 scale."""

    product: torch.Tensor
    exact: torch.Tensor
    scale_cell: torch.Tensor


def _low_tiles(
    q: torch.Tensor, k: torch.Tensor, labels: torch.Tensor, scale32: torch.Tensor, tile_b: int, tile_n: int
) -> _LowTiles | None:
    """The bf16-tile state where the tiles' matmuls run in bf16, else None (fp32 tiles)."""
    if tile_dtype(q, k) == torch.float32:
        return None
    cells = min(tile_b, q.shape[0]) * min(tile_n, k.shape[0])
    # Labels outside [0, n) mean "no positive in these keys": any row index serves, the value is unused.
    safe_labels = labels.clamp(0, k.shape[0] - 1)
    return _LowTiles(
        torch.empty(cells, dtype=q.dtype, device=q.device),
        _exact_positives(q, k, safe_labels, scale32),
        scale32.reshape(1, 1),
    )


def _logit_tile(
    store: torch.Tensor,
    q_tile: torch.Tensor,
    k: torch.Tensor,
    rows: tuple[int, int],
    c0: int,
    c1: int,
    bias: torch.Tensor,
    row_labels: torch.Tensor,
    q_ids: torch.Tensor | None,
    k_ids: torch.Tensor | None,
    low: _LowTiles | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``scale·q_tile @ k[c0:c1].T + bias`` in fp32 with masked entries at −inf.

    ``q_tile`` is the fp32 scaled query tile, or with bf16 tiles (``low``) the raw bf16 rows ``rows``: the
    product is then a bf16 matmul scaled in fp32, with each positive replaced by its fp32 logit (as in the
    InfoNCE tiles: the positives weigh most in the loss and its gradient).

    Returns:
        the logit tile, the key tile the gradient matmuls use, each row's positive position in the tile,
        whether it lies inside, and the bf16 product tile (None for fp32 tiles).
    """
    logits = _tile_buffer(store, q_tile.shape[0], c1 - c0)
    local_label, inside = _positive_position(row_labels, c0, c1 - c0)
    product = None
    if low is None:
        k_tile = k[c0:c1].to(torch.float32)
        torch.mm(q_tile, k_tile.T, out=logits)
    else:
        k_tile = k[c0:c1]
        product = _tile_buffer(low.product, q_tile.shape[0], c1 - c0)
        exact = low.exact[rows[0] : rows[1]]
        _low_precision_logits(logits, product, q_tile, k_tile, low.scale_cell, exact, local_label, inside)
    logits.add_(bias)
    _mask_tile(logits, q_ids, None if k_ids is None else k_ids[c0:c1], local_label, inside)
    return logits, k_tile, local_label, inside, product


@torch.no_grad()
def sigmoid_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    labels: torch.Tensor,
    q_ids: torch.Tensor | None,
    k_ids: torch.Tensor | None,
    tile_b: int,
    tile_n: int,
) -> torch.Tensor:
    """Per-query sigmoid loss ``Σ_j softplus(x_ij) − x_{i,labels[i]}`` over the unmasked keys, tile by tile.

    Args:
        q: (b, d) queries, any float dtype.
        k: (n, d) keys, any float dtype.
        scale: 0-dim fp32 tensor.
        bias: 0-dim fp32 tensor.
        labels: (b,) int64 index of each query's positive in ``k``; −1: no positive among these keys.
        q_ids: (b,) int64 or None; with ``k_ids`` (n,) the false-negative mask.
        k_ids: (n,) int64 or None.
        tile_b: rows per tile.
        tile_n: keys per tile.

    Returns:
        (b,) fp32 per-query losses (sum over this block of keys).

    Example:
        >>> q, k = torch.randn(5, 3), torch.randn(7, 3)
        >>> s, b = torch.tensor(2.0), torch.tensor(-1.0)
        >>> x = 2 * q @ k.T - 1
        >>> want = torch.nn.functional.softplus(x).sum(1) - x.diagonal()
        >>> torch.allclose(sigmoid_forward(q, k, s, b, torch.arange(5), None, None, 2, 4), want, atol=1e-5)
        True
    """
    b, n = q.shape[0], k.shape[0]
    device = q.device
    scale32 = scale.to(device=device, dtype=torch.float32)
    bias32 = bias.to(device=device, dtype=torch.float32)
    per_row = torch.zeros(b, dtype=torch.float32, device=device)
    logit_store = torch.empty(min(tile_b, b) * min(tile_n, n), dtype=torch.float32, device=device)
    low = _low_tiles(q, k, labels, scale32, tile_b, tile_n)
    for r0 in range(0, b, tile_b):
        r1 = min(r0 + tile_b, b)
        q_tile = q[r0:r1] if low is not None else _scaled_query_tile(q, r0, r1, scale32)
        row_ids = None if q_ids is None else q_ids[r0:r1]
        for c0 in range(0, n, tile_n):
            c1 = min(c0 + tile_n, n)
            logits, _, local_label, inside, _ = _logit_tile(
                logit_store, q_tile, k, (r0, r1), c0, c1, bias32, labels[r0:r1], row_ids, k_ids, low
            )
            positive = logits.gather(1, local_label[:, None]).squeeze(1)
            per_row[r0:r1] -= torch.where(inside, positive, torch.zeros_like(positive))
            # softplus(−inf) = 0 exactly (masked pairs); past its threshold 20 softplus(x) = x to fp32.
            # One fused pass; the tile it allocates is recycled by the allocator from tile to tile.
            per_row[r0:r1] += F.softplus(logits).sum(1)
    return per_row


@torch.no_grad()
def sigmoid_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    labels: torch.Tensor,
    q_ids: torch.Tensor | None,
    k_ids: torch.Tensor | None,
    g_row: torch.Tensor,
    tile_b: int,
    tile_n: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``Σ_i g_row[i]·row_i`` w.r.t. q, k, scale and bias, recomputing each tile once.

    Args:
        q, k, scale, bias, labels, q_ids, k_ids, tile_b, tile_n: as for :func:`sigmoid_forward`.
        g_row: (b,) fp32 upstream gradient of each query's loss.

    Returns:
        ``dq`` (b, d) fp32, ``dk`` (n, d) fp32, ``dscale`` and ``dbias`` 0-dim fp32.

    Example:
        >>> q, k = torch.randn(4, 3), torch.randn(6, 3)
        >>> s, b, lab = torch.tensor(1.5), torch.tensor(0.5), torch.arange(4)
        >>> dq, dk, ds, db = sigmoid_backward(q, k, s, b, lab, None, None, torch.ones(4), 3, 4)
        >>> dq.shape, dk.shape, ds.shape, db.shape
        (torch.Size([4, 3]), torch.Size([6, 3]), torch.Size([]), torch.Size([]))
    """
    b, n = q.shape[0], k.shape[0]
    device = q.device
    scale32 = scale.to(device=device, dtype=torch.float32)
    bias32 = bias.to(device=device, dtype=torch.float32)
    g_row = g_row.to(torch.float32)
    dq_raw = torch.zeros(b, q.shape[1], dtype=torch.float32, device=device)  # dX @ k, before the scale
    dk = torch.zeros(n, k.shape[1], dtype=torch.float32, device=device)
    dbias = torch.zeros((), dtype=torch.float32, device=device)
    logit_store = torch.empty(min(tile_b, b) * min(tile_n, n), dtype=torch.float32, device=device)
    low = _low_tiles(q, k, labels, scale32, tile_b, tile_n)
    for r0 in range(0, b, tile_b):
        r1 = min(r0 + tile_b, b)
        q_tile = q[r0:r1] if low is not None else _scaled_query_tile(q, r0, r1, scale32)
        row_ids = None if q_ids is None else q_ids[r0:r1]
        weight = g_row[r0:r1]
        for c0 in range(0, n, tile_n):
            c1 = min(c0 + tile_n, n)
            grad, k_tile, local_label, inside, product = _logit_tile(
                logit_store, q_tile, k, (r0, r1), c0, c1, bias32, labels[r0:r1], row_ids, k_ids, low
            )
            # dx = g·(σ(x) − δ); the tile buffer is reused in place (σ(−inf) = 0 for masked pairs).
            grad.sigmoid_().mul_(weight[:, None])
            grad.scatter_add_(1, local_label[:, None], -(weight * inside)[:, None])
            dbias += grad.sum()
            _accumulate_tile_gradients(dq_raw[r0:r1], dk[c0:c1], grad, product, q_tile, k_tile)
    dscale = (dq_raw * q.to(torch.float32)).sum()
    if low is not None:
        dk.mul_(scale32)  # the bf16 query tiles are unscaled
    return dq_raw.mul_(scale32), dk, dscale, dbias
