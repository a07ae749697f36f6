"""PyTorch backend of the fused InfoNCE kernel contract: tiled, never materialises the b × n logits.

Both backends (this file and ``triton_kernels.py``) implement the same two functions:

``fused_lse_forward(q, k, scale, labels, q_ids, k_ids, compute_col, tile_b, tile_n)``
    One pass over (tile_b × tile_n) tiles of ``S = scale · q @ k.T`` (fp32 accumulation) that produces the
    row log-sum-exp (over all n keys), optionally the column log-sum-exp (over all b queries, for every key
    column) and the positive logit ``S[i, labels[i]]``. Masked entries (``q_ids[i] == k_ids[j]`` and
    ``j != labels[i]``) count as ``-inf``.

``fused_backward(q, k, scale, labels, q_ids, k_ids, row_lse, col_lse, g_row, g_col, tile_b, tile_n)``
    Recomputes each tile once and forms the combined gradient of both directions,
    ``dS = g_row·(softmax_row − δ) + g_col·softmax_col − δ·g_col``, then accumulates
    ``dq = scale·dS @ k``, ``dk = scale·dS.T @ q`` and ``dscale = Σ dS ⊙ (q @ k.T)``.

Executed work: forward one (tile_b × tile_n × d) matmul per tile, backward three (recompute + two), i.e.
8·b·n·d FLOPs in total, plus ≈2·b·n exponentials on CPU: one per tile entry in each pass serves both
directions (column LSE as ``Σ_i e^{row_max_i − M} · exp(S − row_max)``, a matrix-vector product; the
column softmax in backward as a rank-1 rescale of the row one), with exact fallbacks for tiles where those
shortcuts would underflow or overflow. On CUDA (no per-tile host check) each direction keeps its own
exponential pass (≈4·b·n).

Precision: bf16 inputs run the tiles' matmuls in bf16 where :func:`hardbatch.device.fast_bf16_matmul` says
so (AMX CPUs, CUDA), with the positives' logits recomputed in fp32, and are upcast to fp32 tiles elsewhere;
scale, masks, exp / log-sum-exp and the gradient accumulators are fp32 on every path.
Memory: the inputs, O((b + n)·d) fp32 accumulators for the gradients, O(b + n) LSE vectors and three
fp32 tile buffers of tile_b × tile_n (the only quadratic-looking term, bounded by the tile size).

The scale is folded into the (small) fp32 copy of each query tile, so the logit tile needs no extra pass;
``dscale`` comes from the O(b·d) identity ``Σ_ij dS_ij (q_i·k_j) = Σ_i q_i · (dS @ k)_i`` which avoids
dividing by the scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hardbatch.device import fast_bf16_matmul

__all__ = ["DEFAULT_TILE_CPU", "DEFAULT_TILE_CUDA", "fused_backward", "fused_lse_forward", "tile_dtype"]

# 1024 × 1024 fp32 tiles (4 MiB each) keep one query tile, one key tile and the logit tile in L2/L3 on
# typical CPUs while giving the BLAS matmul enough work per call; measured in benchmarks/bench_loss.py.
DEFAULT_TILE_CPU = (1024, 1024)
# On a GPU without Triton the torch backend still works; bigger tiles amortise kernel launches.
DEFAULT_TILE_CUDA = (4096, 4096)

_NEG_INF = float("-inf")


def tile_dtype(q: torch.Tensor, k: torch.Tensor) -> torch.dtype:
    """dtype of the tiles' matmuls: bf16 for bf16 inputs where bf16 matmul is fast, else fp32 (upcast).

    Everything after the matmul (scale, masks, exp, log-sum-exp, gradient weights, accumulators) is fp32
    either way; see :func:`hardbatch.device.fast_bf16_matmul` for the capability test.
    """
    if q.dtype == k.dtype == torch.bfloat16 and fast_bf16_matmul(q.device):
        return torch.bfloat16
    return torch.float32


def _exact_positives(
    q: torch.Tensor, k: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor, rows: int = 4096
) -> torch.Tensor:
    """(b,) fp32 ``scale · q_i · k_labels[i]`` from fp32 products, O(rows·d) scratch."""
    out = torch.empty(q.shape[0], dtype=torch.float32, device=q.device)
    for start in range(0, q.shape[0], rows):
        stop = min(start + rows, q.shape[0])
        pairs = q[start:stop].to(torch.float32) * k[labels[start:stop]].to(torch.float32)
        out[start:stop] = pairs.sum(1)
    return out.mul_(scale)


def _low_precision_logits(
    out: torch.Tensor,
    product: torch.Tensor,
    q_tile: torch.Tensor,
    k_tile: torch.Tensor,
    scale_cell: torch.Tensor,
    exact_positive: torch.Tensor,
    local_label: torch.Tensor,
    inside: torch.Tensor,
) -> None:
    """fp32 logits ``out`` of a tile from a bf16 matmul (``product`` is bf16 scratch of the same shape).

    The product is rounded to bf16 (≈ 2⁻⁹ relative): harmless for the many small negative logits, but the
    positives dominate the loss and its gradient, so their entries are replaced by fp32 dot products.
    """
    torch.mm(q_tile, k_tile.T, out=product)
    # scale_cell is (1, 1), not 0-dim, so the product is promoted and multiplied in fp32.
    torch.mul(product, scale_cell, out=out)
    current = out.gather(1, local_label[:, None]).squeeze(1)
    out.scatter_(1, local_label[:, None], torch.where(inside, exact_positive, current)[:, None])


def _accumulate_tile_gradients(
    dq_rows: torch.Tensor,
    dk_rows: torch.Tensor,
    grad: torch.Tensor,
    product: torch.Tensor | None,
    q_tile: torch.Tensor,
    k_tile: torch.Tensor,
) -> None:
    """``dq_rows += grad @ k_tile`` and ``dk_rows += gradᵀ @ q_tile`` into the fp32 accumulators.

    With bf16 tiles (``product`` is the tile's bf16 scratch) the gradient tile is rounded to bf16 first, so
    both matmuls run in bf16 (as FlashAttention does); otherwise they are fp32 ``addmm``.
    """
    if product is not None:
        grad_low = product.copy_(grad)
        dq_rows.add_(torch.mm(grad_low, k_tile))
        dk_rows.add_(torch.mm(grad_low.T, q_tile))
    else:
        dq_rows.addmm_(grad, k_tile)
        dk_rows.addmm_(grad.T, q_tile)


def _key_tile(k: torch.Tensor, c0: int, c1: int, buffer: torch.Tensor | None) -> torch.Tensor:
    """fp32 keys [c0, c1): a view for fp32 keys, else converted into a reused buffer (no per-tile allocation)."""
    if buffer is None:
        return k[c0:c1]
    return buffer[: c1 - c0].copy_(k[c0:c1])


def _tile_buffer(storage: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """A contiguous (rows, cols) view into a preallocated flat buffer (edge tiles are smaller)."""
    return storage[: rows * cols].view(rows, cols)


def _finite_floor(values: torch.Tensor) -> torch.Tensor:
    """Replace -inf (fully masked row/column) by the lowest finite float so ``x - m`` never gives NaN."""
    return values.clamp(min=torch.finfo(values.dtype).min)


def _lse_along(logits: torch.Tensor, dim: int, work: torch.Tensor) -> torch.Tensor:
    """Stable log-sum-exp of a logit tile along ``dim`` using ``work`` (same shape) as scratch."""
    shift = _finite_floor(logits.amax(dim=dim, keepdim=True))
    torch.sub(logits, shift, out=work)
    work.exp_()
    return work.sum(dim=dim).log_().add_(shift.squeeze(dim))


def _scaled_query_tile(q: torch.Tensor, start: int, stop: int, scale: torch.Tensor) -> torch.Tensor:
    """fp32 copy of ``scale · q[start:stop]`` (the scale is folded into the small operand)."""
    # torch.mul allocates: an in-place multiply would write into a float32 caller's tensor.
    return torch.mul(q[start:stop].to(torch.float32), scale)


def _mask_tile(
    logits: torch.Tensor,
    q_ids: torch.Tensor | None,
    k_ids: torch.Tensor | None,
    local_label: torch.Tensor,
    label_in_tile: torch.Tensor,
) -> None:
    """Set false negatives (same id, not the row's own positive) of one tile to -inf, in place."""
    if q_ids is None or k_ids is None:
        return
    same_id = q_ids[:, None] == k_ids[None, :]
    # The row's own positive is never masked, even when its id matches (it always does).
    keep = torch.zeros_like(same_id)
    keep.scatter_(1, local_label[:, None], label_in_tile[:, None])
    logits.masked_fill_(same_id & ~keep, _NEG_INF)


def _positive_position(labels: torch.Tensor, start: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Column of each row's positive inside the key tile [start, start+width) and whether it is there.

    Sync-free (no ``nonzero``), so the same code runs on CUDA without host round trips.
    """
    local = labels - start
    inside = (local >= 0) & (local < width)
    return local.clamp(0, width - 1), inside


@dataclass(frozen=True)
class _Scratch:
    """The tile buffers of one pass (flat, viewed per tile by :func:`_tile_buffer`).

    ``logits`` and ``work`` are fp32 (tile_b·tile_n); with bf16 tiles (``low``) also the bf16 matmul
    product and the positives' exact fp32 logits (b,).
    """

    logits: torch.Tensor
    work: torch.Tensor
    low: bool
    product: torch.Tensor | None
    exact: torch.Tensor | None


def _scratch(
    q: torch.Tensor, k: torch.Tensor, labels: torch.Tensor, scale32: torch.Tensor, tile_b: int, tile_n: int
) -> _Scratch:
    b, n, device = q.shape[0], k.shape[0], q.device
    tile_cells = min(tile_b, b) * min(tile_n, n)
    logits = torch.empty(tile_cells, dtype=torch.float32, device=device)
    work = torch.empty(tile_cells, dtype=torch.float32, device=device)
    low = tile_dtype(q, k) != torch.float32
    product = exact = None
    if low:
        product = torch.empty(tile_cells, dtype=q.dtype, device=device)
        exact = _exact_positives(q, k, labels, scale32)
    return _Scratch(logits, work, low, product, exact)


def _masked_logits(
    scratch: _Scratch,
    q_tile: torch.Tensor,
    k_tile: torch.Tensor,
    scale32: torch.Tensor,
    rows: tuple[int, int],
    c0: int,
    row_labels: torch.Tensor,
    q_ids: torch.Tensor | None,
    k_ids: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """fp32 logits of the tile (rows r0:r1, keys c0:c0 + len(k_tile)), masked entries at −inf.

    Returns:
        the logit tile, the bf16 product tile (None for fp32 tiles), each row's positive position in the
        tile and whether it lies inside.
    """
    r0, r1 = rows
    c1 = c0 + k_tile.shape[0]
    logits = _tile_buffer(scratch.logits, r1 - r0, c1 - c0)
    local_label, inside = _positive_position(row_labels, c0, c1 - c0)
    product = None
    if scratch.low:
        assert scratch.product is not None and scratch.exact is not None
        product = _tile_buffer(scratch.product, r1 - r0, c1 - c0)
        _low_precision_logits(
            logits, product, q_tile, k_tile, scale32.reshape(1, 1), scratch.exact[r0:r1], local_label, inside
        )
    else:
        torch.mm(q_tile, k_tile.T, out=logits)
    _mask_tile(
        logits,
        None if q_ids is None else q_ids[r0:r1],
        None if k_ids is None else k_ids[c0:c1],
        local_label,
        inside,
    )
    return logits, product, local_label, inside


@torch.no_grad()
def fused_lse_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: torch.Tensor,
    labels: torch.Tensor,
    q_ids: torch.Tensor | None,
    k_ids: torch.Tensor | None,
    compute_col: bool,
    tile_b: int,
    tile_n: int,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Row/column log-sum-exp and positive logits of ``S = scale · q @ k.T`` without materialising S.

    Args:
        q: (b, d) queries, any float dtype.
        k: (n, d) keys, any float dtype.
        scale: 0-dim fp32 tensor.
        labels: (b,) int64, index of each query's positive key in ``k``.
        q_ids: (b,) int64 or None; with ``k_ids`` defines the false-negative mask.
        k_ids: (n,) int64 or None.
        compute_col: also return the column log-sum-exp (for the symmetric loss).
        tile_b: rows per tile.
        tile_n: keys per tile.

    Returns:
        ``row_lse`` (b,) fp32, ``col_lse`` (n,) fp32 or None, ``pos_logit`` (b,) fp32.

    Example:
        >>> q, k = torch.randn(5, 3), torch.randn(7, 3)
        >>> row, col, pos = fused_lse_forward(q, k, torch.tensor(2.0), torch.arange(5), None, None, True, 2, 4)
        >>> torch.allclose(row, torch.logsumexp(2 * q @ k.T, 1), atol=1e-5)
        True
    """
    b, n = q.shape[0], k.shape[0]
    device = q.device
    scale32 = scale.to(device=device, dtype=torch.float32)
    row_lse = torch.full((b,), _NEG_INF, dtype=torch.float32, device=device)
    col_lse = torch.full((n,), _NEG_INF, dtype=torch.float32, device=device) if compute_col else None
    pos_logit = torch.zeros(b, dtype=torch.float32, device=device)
    scratch = _scratch(q, k, labels, scale32, tile_b, tile_n)
    low = scratch.low
    if not low:
        # One transient fp32 copy of the keys (n·d·4 bytes, below the backward's fp32 gradient buffers)
        # instead of converting every key tile once per query tile.
        k = k.to(torch.float32)
    for r0 in range(0, b, tile_b):
        r1 = min(r0 + tile_b, b)
        q_tile = q[r0:r1] if low else _scaled_query_tile(q, r0, r1, scale32)
        row_labels = labels[r0:r1]
        for c0 in range(0, n, tile_n):
            c1 = min(c0 + tile_n, n)
            logits, _, local_label, inside = _masked_logits(
                scratch, q_tile, k[c0:c1], scale32, (r0, r1), c0, row_labels, q_ids, k_ids
            )
            positive = logits.gather(1, local_label[:, None]).squeeze(1)
            pos_logit[r0:r1] = torch.where(inside, positive, pos_logit[r0:r1])
            work = _tile_buffer(scratch.work, r1 - r0, c1 - c0)
            row_part, col_part = _tile_lses(logits, work, col_lse is not None)
            torch.logaddexp(row_lse[r0:r1], row_part, out=row_lse[r0:r1])
            if col_lse is not None:
                torch.logaddexp(col_lse[c0:c1], col_part, out=col_lse[c0:c1])
    return row_lse, col_lse, pos_logit


# A column whose rescaled sum falls below this may have lost terms to underflow in the weights
# exp(row_max_i − M); such (rare) columns are recomputed exactly. Above it, the lost terms (each
# < e^-87 relative to e^M) are below fp32 resolution.
_COL_SUM_FLOOR = 1e-20


def _tile_lses(
    logits: torch.Tensor, work: torch.Tensor, compute_col: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Row and column log-sum-exp of one fp32 logit tile from ONE exponential pass.

    ``E = exp(S − row_max)`` gives the row sums directly; the column sums are ``Σ_i e^{row_max_i − M} E_ij``
    (a matrix-vector product, M = the tile's largest row max), which replaces a second max / subtract / exp
    pass over the tile.
    """
    row_max = _finite_floor(logits.amax(dim=1))
    torch.sub(logits, row_max[:, None], out=work)
    work.exp_()
    row_part = work.sum(dim=1).log_().add_(row_max)
    if not compute_col:
        return row_part, None
    if logits.device.type != "cpu":
        # The underflow check below would cost a device sync per tile: keep the second pass there.
        return row_part, _lse_along(logits, 0, work)
    top = row_max.max()
    col_sum = torch.mv(work.T, (row_max - top).exp_())
    col_part = col_sum.log().add_(top)
    lost = col_sum < _COL_SUM_FLOOR
    if bool(lost.any()):
        col_part = torch.where(lost, torch.logsumexp(logits, dim=0), col_part)
    return row_part, col_part


# exp(R − c_j) stays far from fp32 overflow (e^88) below this gap; larger gaps take the two-exp path.
_MAX_SHIFT_GAP = 60.0


def _column_weights(
    row_lse: torch.Tensor, col_lse: torch.Tensor, col_weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``u_i = e^{r_i − R}``, ``v_j = g_col_j · e^{R − c_j}`` (R = max r_i) so that exp(S − c_j) = P_ij·u_i·v_j/g_col_j.

    Returns None (use two exponential passes) off CPU, where the overflow check would need a device sync,
    or when some active column's LSE lies more than ``_MAX_SHIFT_GAP`` below R (e.g. a fully masked column).
    Rows with r_i ≪ R underflow in u_i only where their column-softmax terms are below e^-(103 − gap).
    """
    if row_lse.device.type != "cpu":
        return None
    top = row_lse.max()
    active = col_weight != 0
    gap = torch.where(active, top - col_lse, torch.zeros_like(col_lse))
    if bool(gap.max() > _MAX_SHIFT_GAP):
        return None
    v = torch.where(active, col_weight * gap.exp(), torch.zeros_like(col_weight))
    return (row_lse - top).exp(), v


@torch.no_grad()
def fused_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: torch.Tensor,
    labels: torch.Tensor,
    q_ids: torch.Tensor | None,
    k_ids: torch.Tensor | None,
    row_lse: torch.Tensor,
    col_lse: torch.Tensor | None,
    g_row: torch.Tensor,
    g_col: torch.Tensor | None,
    tile_b: int,
    tile_n: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of both InfoNCE directions w.r.t. q, k and scale, recomputing each logit tile once.

    Args:
        q, k, scale, labels, q_ids, k_ids: as for :func:`fused_lse_forward`.
        row_lse: (b,) fp32 from the forward.
        col_lse: (n,) fp32 from the forward, or None when there is no column term.
        g_row: (b,) fp32 upstream gradient of each row term ``row_lse[i] - pos_logit[i]``.
        g_col: (n,) fp32 upstream gradient of the column terms, summed per positive key column, or None.
        tile_b, tile_n: tile shape.

    Returns:
        ``dq`` (b, d) fp32, ``dk`` (n, d) fp32, ``dscale`` 0-dim fp32.

    Example:
        >>> q, k = torch.randn(4, 3), torch.randn(6, 3)
        >>> lab, s = torch.arange(4), torch.tensor(1.5)
        >>> row, _, _ = fused_lse_forward(q, k, s, lab, None, None, False, 3, 4)
        >>> dq, dk, ds = fused_backward(q, k, s, lab, None, None, row, None, torch.ones(4), None, 3, 4)
        >>> dq.shape, dk.shape, ds.shape
        (torch.Size([4, 3]), torch.Size([6, 3]), torch.Size([]))
    """
    b, n = q.shape[0], k.shape[0]
    device = q.device
    scale32 = scale.to(device=device, dtype=torch.float32)
    # Fully masked columns have col_lse = -inf; their softmax is 0, not NaN.
    row_lse = _finite_floor(row_lse.to(torch.float32))
    col_lse = None if col_lse is None else _finite_floor(col_lse.to(torch.float32))
    g_row = g_row.to(torch.float32)
    g_col = None if g_col is None else g_col.to(torch.float32)
    dq_raw = torch.zeros(b, q.shape[1], dtype=torch.float32, device=device)  # dS @ k, before the scale
    dk = torch.zeros(n, k.shape[1], dtype=torch.float32, device=device)
    # With bf16 tiles the product tile is reused for the gradient tile rounded for the two gradient matmuls.
    scratch = _scratch(q, k, labels, scale32, tile_b, tile_n)
    low = scratch.low
    # Unlike the forward, no whole fp32 key copy: here it would come on top of the dq / dk buffers, at the
    # loss's memory peak. Converting each key tile once per query tile is one d-wide copy per key and query
    # tile, against the tile's 3·tile_b·d multiply-adds per key.
    upcast = (
        None if low or k.dtype == torch.float32 else torch.empty(min(tile_n, n), k.shape[1], device=device)
    )
    # Key tiles without any positive column (hard-negative tiles) have g_col == 0: skip their column
    # softmax (it is multiplied by exactly 0). Checked on CPU only, where it costs no device sync.
    col_active = [
        g_col is not None and (device.type != "cpu" or bool(g_col[c0 : c0 + tile_n].any()))
        for c0 in range(0, n, tile_n)
    ]
    for r0 in range(0, b, tile_b):
        r1 = min(r0 + tile_b, b)
        q_tile = q[r0:r1] if low else _scaled_query_tile(q, r0, r1, scale32)
        row_labels = labels[r0:r1]
        row_shift = row_lse[r0:r1, None]
        row_weight = g_row[r0:r1]
        for tile_index, c0 in enumerate(range(0, n, tile_n)):
            c1 = min(c0 + tile_n, n)
            k_tile = k[c0:c1] if low else _key_tile(k, c0, c1, upcast)
            logits, product, local_label, inside = _masked_logits(
                scratch, q_tile, k_tile, scale32, (r0, r1), c0, row_labels, q_ids, k_ids
            )
            grad = _tile_buffer(scratch.work, r1 - r0, c1 - c0)
            torch.sub(logits, row_shift, out=grad)
            grad.exp_()
            positive_weight = row_weight
            if col_active[tile_index] and g_col is not None and col_lse is not None:
                col_weight = g_col[c0:c1]
                weights = _column_weights(row_shift[:, 0], col_lse[c0:c1], col_weight)
                if weights is None:
                    grad.mul_(row_weight[:, None])
                    # The logit tile is not needed any more: reuse it for the column softmax.
                    logits.sub_(col_lse[None, c0:c1]).exp_().mul_(col_weight[None, :])
                    grad.add_(logits)
                else:
                    # exp(S − c_j) = P_ij · u_i · v_j: one exponential pass serves both softmaxes.
                    torch.addr(row_weight[:, None].expand_as(logits), weights[0], weights[1], out=logits)
                    grad.mul_(logits)
                positive_weight = row_weight + col_weight[local_label]
            else:
                grad.mul_(row_weight[:, None])
            # −δ terms of both directions, only for rows whose positive lies in this key tile.
            grad.scatter_add_(1, local_label[:, None], -(positive_weight * inside)[:, None])
            _accumulate_tile_gradients(dq_raw[r0:r1], dk[c0:c1], grad, product, q_tile, k_tile)
    # Σ_i q_i · (dS @ k)_i in row chunks: no (b, d) fp32 temporaries on top of the gradient buffers.
    dscale = sum(
        torch.linalg.vecdot(dq_raw[r0 : r0 + tile_b], q[r0 : r0 + tile_b].to(torch.float32)).sum()
        for r0 in range(0, b, tile_b)
    ) + torch.zeros((), dtype=torch.float32, device=device)
    if low:
        dk.mul_(scale32)  # the bf16 query tiles are unscaled
    return dq_raw.mul_(scale32), dk, dscale
