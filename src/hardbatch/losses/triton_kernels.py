"""Fused Triton kernels for the exact bidirectional InfoNCE / CLIP loss (CUDA path).

Implements the kernel contract of ``tiled.py`` (``fused_lse_forward`` / ``fused_backward``): every
(row block, key tile) of ``S = scale · q @ k.T`` is computed once in forward (online row LSE and a column
partial) and once in backward (``dq`` and ``dk`` from the same ``dS`` tile); nothing of size b × n is
allocated. Executed matmul FLOPs 8·b·n·d fwd + bwd (10·b·n·d with the deterministic backward), fp32
accumulation, inputs read in their own dtype, scratch O(G·n + S·b) for G row groups and S key splits.

The design (grid layout, atomics vs the deterministic mode, precision, addressing) is described in
docs/losses.md, section "Triton kernels: design". The backward's tile walk (``_owned_tile``,
``_owner_accumulator``) and gradient push (``_push_tile_grads``, ``_store_owned``) are ``@triton.jit``
helpers shared with the sigmoid (SigLIP) kernels of ``triton_sigmoid.py``, as are the host-side checks,
configs and launch layouts. ``TRITON_INTERPRET=1`` set before importing this module
runs the kernels on CPU tensors in Triton's interpreter (tests only).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os

import torch

from hardbatch.errors import ConfigError, require

triton = require("triton", "triton", "The fused InfoNCE Triton kernels (hardbatch.losses.triton_kernels)")
import triton.language as tl  # noqa: E402  (triton itself is imported by `require` above)

__all__ = [
    "backward_flops",
    "forward_flops",
    "fused_backward",
    "fused_lse_forward",
    "interpreter_enabled",
    "triton_supported",
]

_NEG_INF = float("-inf")
_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Interpreter (CPU) configuration: small blocks so tests exercise many tiles at tiny sizes.
_INTERPRET_BLOCK_MAX = 32
_INTERPRET_BLOCK_D = 16
_MIN_BLOCK = 16  # tl.dot needs every dimension >= 16


def interpreter_enabled() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1`` at import time)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def triton_supported(tensor: torch.Tensor) -> bool:
    """True when the fused kernels can run on ``tensor``'s device and dtype.

    CUDA tensors of dtype fp32/bf16/fp16 are supported; CPU tensors only under the interpreter.
    """
    if tensor.dtype not in _SUPPORTED_DTYPES:
        return False
    return tensor.is_cuda or (tensor.device.type == "cpu" and interpreter_enabled())


def forward_flops(b: int, n: int, d: int) -> int:
    """Matmul FLOPs executed by :func:`fused_lse_forward` (one ``S`` evaluation): ``2·b·n·d``."""
    return 2 * b * n * d


def backward_flops(b: int, n: int, d: int, *, deterministic: bool = False) -> int:
    """Matmul FLOPs executed by :func:`fused_backward`: ``6·b·n·d`` (fast) or ``8·b·n·d`` (deterministic)."""
    return (8 if deterministic else 6) * b * n * d


# --------------------------------------------------------------------------------------------- kernels
# Addressing: every tile advances *scalar* base pointers by its first row/column (64-bit scalar math) and
# uses int32 offsets inside the tile, which keeps the per-element address registers small (no int64
# index tensors). Labels and ids are int32 (the host compacts ids), for the same reason.


@triton.jit
def _logits_tile(
    Q_blk,
    K_blk,
    row_ok,
    col_ok,
    stride_qb,
    stride_qd,
    stride_kn,
    stride_kd,
    D: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Unscaled fp32 dot products of one (BLOCK_M, BLOCK_N) tile, looping over ``d`` in BLOCK_D chunks.

    ``Q_blk``/``K_blk`` point at the tile's first query / key row.
    """
    EVEN_D: tl.constexpr = D % BLOCK_D == 0
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    offs_d = tl.arange(0, BLOCK_D)
    q_rows = tl.arange(0, BLOCK_M)[:, None] * stride_qb
    k_cols = tl.arange(0, BLOCK_N)[None, :] * stride_kn
    for d0 in range(0, D, BLOCK_D):
        q_ptrs = Q_blk + q_rows + (d0 + offs_d)[None, :] * stride_qd
        k_ptrs = K_blk + k_cols + (d0 + offs_d)[:, None] * stride_kd
        if EVEN_D:
            q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
            kt = tl.load(k_ptrs, mask=col_ok[None, :], other=0.0)
        else:
            d_ok = (d0 + offs_d) < D
            q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            kt = tl.load(k_ptrs, mask=col_ok[None, :] & d_ok[:, None], other=0.0)
        if DOT_FP32:  # interpreter only: its tl.dot mishandles bf16 (stored as raw uint16)
            q = q.to(tl.float32)
            kt = kt.to(tl.float32)
        acc = tl.dot(q, kt, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _tile_masks(cols, row_ok, col_ok, labels, q_ids, k_ids, HAS_IDS: tl.constexpr):
    """(valid, is_positive) boolean tiles: in range and not masked as a same-id non-positive pair."""
    is_pos = labels[:, None] == cols[None, :]
    valid = row_ok[:, None] & col_ok[None, :]
    if HAS_IDS:
        valid = valid & ((q_ids[:, None] != k_ids[None, :]) | is_pos)
    return valid, is_pos


@triton.jit
def _logaddexp(a, b):
    """Elementwise log(exp(a) + exp(b)) that returns -inf (not NaN) when both are -inf."""
    mx = tl.maximum(a, b)
    safe = tl.where(mx == float("-inf"), 0.0, mx)
    return safe + tl.log(tl.exp(a - safe) + tl.exp(b - safe))


@triton.jit
def _fwd_kernel(
    Q,
    K,
    SCALE,
    LABELS,
    Q_IDS,
    K_IDS,
    ROW_PART,
    COL_PART,
    POS,
    B,
    N,
    stride_qb,
    stride_qd,
    stride_kn,
    stride_kd,
    B_BUCKET,
    N_BUCKET,
    D: tl.constexpr,
    HAS_IDS: tl.constexpr,
    COMPUTE_COL: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Program (group g, split s) of a (G, S) grid: row blocks g, g+G, ...; key tiles s, s+S, ...

    Writes ROW_PART[s, rows] (row LSE over this split's keys), COL_PART[g, cols] (column LSE over this
    group's rows; read-modify-write, owned by this program) and POS[rows] for labels in its key tiles.
    B_BUCKET / N_BUCKET are unused here: they are autotune keys (power-of-two size buckets).
    """
    group = tl.program_id(0)
    split = tl.program_id(1)
    NUM_ROW_GROUPS = tl.num_programs(0)
    NUM_KEY_SPLITS = tl.num_programs(1)
    scale = tl.load(SCALE).to(tl.float32)
    num_row_blocks = tl.cdiv(B, BLOCK_M)
    num_key_tiles = tl.cdiv(N, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    col_part_row = COL_PART + group.to(tl.int64) * N
    for rb in range(group, num_row_blocks, NUM_ROW_GROUPS):
        start_m = rb * BLOCK_M
        rows = start_m + offs_m
        row_ok = rows < B
        Q_blk = Q + start_m.to(tl.int64) * stride_qb
        labels = tl.load(LABELS + rows, mask=row_ok, other=-1)
        q_ids = labels
        if HAS_IDS:
            q_ids = tl.load(Q_IDS + rows, mask=row_ok, other=0)
        m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for kt in range(split, num_key_tiles, NUM_KEY_SPLITS):
            start_n = kt * BLOCK_N
            cols = start_n + offs_n
            col_ok = cols < N
            k_ids = cols
            if HAS_IDS:
                k_ids = tl.load(K_IDS + cols, mask=col_ok, other=0)
            dots = _logits_tile(
                Q_blk, K + start_n.to(tl.int64) * stride_kn, row_ok, col_ok, stride_qb, stride_qd, stride_kn,
                stride_kd, D, PRECISION, DOT_FP32, BLOCK_M, BLOCK_N, BLOCK_D,
            )  # fmt: skip
            valid, is_pos = _tile_masks(cols, row_ok, col_ok, labels, q_ids, k_ids, HAS_IDS)
            s = tl.where(valid, dots * scale, float("-inf"))
            # Positive logits: only the (usually single) key tile holding a row's label does this work.
            label_here = row_ok & (labels >= start_n) & (labels < start_n + BLOCK_N)
            if tl.sum(label_here.to(tl.int32), axis=0) > 0:
                pos = tl.sum(tl.where(is_pos, s, 0.0), axis=1)
                tl.store(POS + rows, pos, mask=label_here)
            # Row direction: FlashAttention online max/sum (rescale the running sum when the max grows).
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            l_i = l_i * tl.exp(m_i - m_safe) + tl.sum(tl.exp(s - m_safe[:, None]), axis=1)
            m_i = m_new
            if COMPUTE_COL:
                c_max = tl.max(s, axis=0)
                c_safe = tl.where(c_max == float("-inf"), 0.0, c_max)
                tile_lse = c_safe + tl.log(tl.sum(tl.exp(s - c_safe[None, :]), axis=0))
                # The first row block of this group initialises its partial row; later ones merge.
                # (The buffer is uninitialised before that: whatever the load returns is discarded.)
                old = tl.load(col_part_row + cols, mask=col_ok, other=float("-inf"))
                old = tl.where(rb == group, float("-inf"), old)
                tl.store(col_part_row + cols, _logaddexp(old, tile_lse), mask=col_ok)
        m_safe = tl.where(m_i == float("-inf"), 0.0, m_i)
        tl.store(ROW_PART + split.to(tl.int64) * B + rows, m_safe + tl.log(l_i), mask=row_ok)


@triton.jit
def _lse_combine_kernel(PART, OUT, R, C, BLOCK: tl.constexpr):
    """OUT[c] = logsumexp_r PART[r, c] for a (R, C) fp32 buffer, streaming over r (no (R, C) temporaries)."""
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < C
    m = tl.full((BLOCK,), float("-inf"), dtype=tl.float32)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    ptrs = PART + cols
    for _ in range(0, R):
        x = tl.load(ptrs, mask=ok, other=float("-inf"))
        m_new = tl.maximum(m, x)
        safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        acc = acc * tl.exp(m - safe) + tl.exp(x - safe)
        m = m_new
        ptrs += C
    safe = tl.where(m == float("-inf"), 0.0, m)
    tl.store(OUT + cols, safe + tl.log(acc), mask=ok)


@triton.jit
def _owner_accumulator(
    B, N, MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr
):
    """(zeroed owned-gradient block, number of inner tiles) of a backward program in ``MODE``."""
    if MODE == 0:
        num_inner = tl.cdiv(N, BLOCK_N)
        owner_acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    else:
        num_inner = tl.cdiv(B, BLOCK_M)
        owner_acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    return owner_acc, num_inner


@triton.jit
def _owned_tile(
    owner,
    inner,
    Q,
    K,
    LABELS,
    Q_IDS,
    K_IDS,
    B,
    N,
    stride_qb,
    stride_qd,
    stride_kn,
    stride_kd,
    D: tl.constexpr,
    MODE: tl.constexpr,
    HAS_IDS: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Dot products and masks of the tile a backward program visits at step ``inner``.

    MODE 0: ``owner`` is a row block and ``inner`` a key tile; MODE 1 the other way round. Returns
    (start_m, start_n, rows, cols, row_ok, col_ok, Q_blk, K_blk, dots, valid, is_pos).
    """
    if MODE == 0:
        start_m = owner * BLOCK_M
        start_n = inner * BLOCK_N
    else:
        start_m = inner * BLOCK_M
        start_n = owner * BLOCK_N
    rows = start_m + tl.arange(0, BLOCK_M)
    cols = start_n + tl.arange(0, BLOCK_N)
    row_ok = rows < B
    col_ok = cols < N
    Q_blk = Q + start_m.to(tl.int64) * stride_qb
    K_blk = K + start_n.to(tl.int64) * stride_kn
    labels = tl.load(LABELS + rows, mask=row_ok, other=-1)
    q_ids = labels
    k_ids = cols
    if HAS_IDS:
        q_ids = tl.load(Q_IDS + rows, mask=row_ok, other=0)
        k_ids = tl.load(K_IDS + cols, mask=col_ok, other=0)
    dots = _logits_tile(
        Q_blk, K_blk, row_ok, col_ok, stride_qb, stride_qd, stride_kn, stride_kd,
        D, PRECISION, DOT_FP32, BLOCK_M, BLOCK_N, BLOCK_D,
    )  # fmt: skip
    valid, is_pos = _tile_masks(cols, row_ok, col_ok, labels, q_ids, k_ids, HAS_IDS)
    return start_m, start_n, rows, cols, row_ok, col_ok, Q_blk, K_blk, dots, valid, is_pos


@triton.jit
def _push_tile_grads(
    ds,
    Q_blk,
    K_blk,
    DQ,
    DK,
    start_m,
    start_n,
    row_ok,
    col_ok,
    owner_acc,
    NUM_SPLITS,
    stride_qb,
    stride_qd,
    stride_kn,
    stride_kd,
    D: tl.constexpr,
    MODE: tl.constexpr,
    WRITE_OTHER: tl.constexpr,
    IS_FP16: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Add ``ds @ k`` into dq and ``ds.T @ q`` into dk for one tile, ``BLOCK_D`` feature columns at a time.

    ``ds`` is the fp32 (BLOCK_M, BLOCK_N) gradient w.r.t. the tile's unscaled dot products (already times
    the scale; 0 where masked / out of range), shared by every loss built on these tiles. It is cast to the
    input dtype for the two matmuls (FlashAttention's choice), fp16 with a per-tile rescale. The owned side
    (MODE 0: dq of this row block, MODE 1: dk of this key tile) is accumulated in ``owner_acc`` when d fits
    one chunk (returned; :func:`_store_owned` writes it), else read-modify-written (one split) or added
    atomically; with WRITE_OTHER the other side is added atomically.
    """
    SINGLE_CHUNK: tl.constexpr = D <= BLOCK_D
    EVEN_D: tl.constexpr = D % BLOCK_D == 0
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    # fp16 has a narrow exponent range: normalise the tile by its max so tiny gradients survive the cast.
    amax = tl.max(tl.max(tl.abs(ds), axis=1), axis=0)
    if IS_FP16:
        ds = ds * tl.where(amax > 0.0, 1.0 / amax, 0.0)
    ds_op = ds.to(Q_blk.dtype.element_ty)
    if DOT_FP32:  # interpreter emulation of a bf16 dot: round dS to bf16, multiply in fp32
        ds_op = ds_op.to(tl.float32)
    q_ptrs = Q_blk + offs_m[:, None] * stride_qb + offs_d[None, :] * stride_qd
    k_ptrs = K_blk + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
    dq_ptrs = DQ + start_m.to(tl.int64) * D + offs_m[:, None] * D + offs_d[None, :]
    dk_ptrs = DK + start_n.to(tl.int64) * D + offs_n[:, None] * D + offs_d[None, :]
    for d0 in range(0, D, BLOCK_D):
        if EVEN_D:
            q_mask = row_ok[:, None]
            k_mask = col_ok[:, None]
        else:
            d_ok = (d0 + offs_d) < D
            q_mask = row_ok[:, None] & d_ok[None, :]
            k_mask = col_ok[:, None] & d_ok[None, :]
        # dq needs k (row-owned programs, or as the atomic "other" side); dk needs q.
        if (MODE == 0) or WRITE_OTHER:
            kc = tl.load(k_ptrs, mask=k_mask, other=0.0)
            if DOT_FP32:
                kc = kc.to(tl.float32)
            dq_part = tl.dot(ds_op, kc, input_precision=PRECISION)
            if IS_FP16:
                dq_part = dq_part * amax
        if (MODE == 1) or WRITE_OTHER:
            qc = tl.load(q_ptrs, mask=q_mask, other=0.0)
            if DOT_FP32:
                qc = qc.to(tl.float32)
            dk_part = tl.dot(tl.trans(ds_op), qc, input_precision=PRECISION)
            if IS_FP16:
                dk_part = dk_part * amax
        if MODE == 0:
            own_part, own_ptrs, own_mask = dq_part, dq_ptrs, q_mask
        else:
            own_part, own_ptrs, own_mask = dk_part, dk_ptrs, k_mask
        if SINGLE_CHUNK:
            owner_acc += own_part
        elif NUM_SPLITS == 1:
            # Sole owner of these rows: plain read-modify-write, deterministic.
            tl.store(own_ptrs, tl.load(own_ptrs, mask=own_mask, other=0.0) + own_part, mask=own_mask)
        else:
            tl.atomic_add(own_ptrs, own_part, mask=own_mask, sem="relaxed")
        if WRITE_OTHER:
            if MODE == 0:
                tl.atomic_add(dk_ptrs, dk_part, mask=k_mask, sem="relaxed")
            else:
                tl.atomic_add(dq_ptrs, dq_part, mask=q_mask, sem="relaxed")
        q_ptrs += BLOCK_D * stride_qd
        k_ptrs += BLOCK_D * stride_kd
        dq_ptrs += BLOCK_D
        dk_ptrs += BLOCK_D
    return owner_acc


@triton.jit
def _store_owned(
    owner_acc,
    DQ,
    DK,
    owner,
    B,
    N,
    NUM_SPLITS,
    D: tl.constexpr,
    MODE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Write the owned gradient block kept in registers (only when d fits one chunk; else a no-op)."""
    SINGLE_CHUNK: tl.constexpr = D <= BLOCK_D
    if SINGLE_CHUNK:
        offs_m = tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        # d fits one chunk: the owned gradient block stayed in registers for the whole inner loop.
        d_ok = offs_d < D
        if MODE == 0:
            own_rows = owner * BLOCK_M + offs_m
            ptrs = DQ + (owner * BLOCK_M).to(tl.int64) * D + offs_m[:, None] * D + offs_d[None, :]
            mask = (own_rows < B)[:, None] & d_ok[None, :]
        else:
            own_cols = owner * BLOCK_N + offs_n
            ptrs = DK + (owner * BLOCK_N).to(tl.int64) * D + offs_n[:, None] * D + offs_d[None, :]
            mask = (own_cols < N)[:, None] & d_ok[None, :]
        if NUM_SPLITS == 1:
            tl.store(ptrs, owner_acc, mask=mask)
        else:
            tl.atomic_add(ptrs, owner_acc, mask=mask, sem="relaxed")


@triton.jit
def _bwd_kernel(
    Q,
    K,
    SCALE,
    LABELS,
    Q_IDS,
    K_IDS,
    ROW_LSE,
    COL_LSE,
    G_ROW,
    G_COL,
    DQ,
    DK,
    DSCALE_PART,
    B,
    N,
    stride_qb,
    stride_qd,
    stride_kn,
    stride_kd,
    B_BUCKET,
    N_BUCKET,
    D: tl.constexpr,
    HAS_IDS: tl.constexpr,
    HAS_COL: tl.constexpr,
    MODE: tl.constexpr,
    WRITE_OTHER: tl.constexpr,
    COMPUTE_DSCALE: tl.constexpr,
    IS_FP16: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Recompute S tiles once and push dS into dq / dk.

    MODE 0 (row-owned): program (row block r, split s) visits key tiles s, s+S, ... and owns dq[r] (plain
    read-modify-write when S == 1, atomics otherwise); with WRITE_OTHER it atomically adds into dk.
    MODE 1 (key-owned): program (key tile t, split s) visits row blocks s, s+S, ... and owns dk[t]; with
    WRITE_OTHER it atomically adds into dq. DSCALE_PART[program] receives this program's sum(dS * q·k).
    DQ/DK are contiguous fp32 (rows, D). B_BUCKET / N_BUCKET are autotune keys only.
    """
    owner = tl.program_id(0)
    split = tl.program_id(1)
    NUM_SPLITS = tl.num_programs(1)  # the grid's second axis, chosen per config by the launch grid
    scale = tl.load(SCALE).to(tl.float32)
    owner_acc, num_inner = _owner_accumulator(B, N, MODE, BLOCK_M, BLOCK_N, BLOCK_D)
    dscale_acc = tl.sum(tl.zeros((BLOCK_M,), dtype=tl.float32), axis=0)
    for inner in range(split, num_inner, NUM_SPLITS):
        start_m, start_n, rows, cols, row_ok, col_ok, Q_blk, K_blk, dots, valid, is_pos = _owned_tile(
            owner, inner, Q, K, LABELS, Q_IDS, K_IDS, B, N, stride_qb, stride_qd, stride_kn, stride_kd,
            D, MODE, HAS_IDS, PRECISION, DOT_FP32, BLOCK_M, BLOCK_N, BLOCK_D,
        )  # fmt: skip
        s = dots * scale
        row_lse = tl.load(ROW_LSE + rows, mask=row_ok, other=0.0)
        g_row = tl.load(G_ROW + rows, mask=row_ok, other=0.0)
        ds = g_row[:, None] * tl.exp(s - row_lse[:, None])
        pos_weight = g_row[:, None]
        if HAS_COL:
            col_lse = tl.load(COL_LSE + cols, mask=col_ok, other=0.0)
            g_col = tl.load(G_COL + cols, mask=col_ok, other=0.0)
            ds += g_col[None, :] * tl.exp(s - col_lse[None, :])
            pos_weight = pos_weight + g_col[None, :]
        # Positives get -(g_row + g_col); masked / out-of-range entries contribute nothing (this also
        # removes the NaN of exp(-inf - -inf) in fully masked columns).
        ds = tl.where(is_pos, ds - pos_weight, ds)
        ds = tl.where(valid, ds, 0.0)
        if COMPUTE_DSCALE:
            dscale_acc += tl.sum(tl.sum(ds * dots, axis=1), axis=0)
        owner_acc = _push_tile_grads(
            ds * scale, Q_blk, K_blk, DQ, DK, start_m, start_n, row_ok, col_ok, owner_acc, NUM_SPLITS,
            stride_qb, stride_qd, stride_kn, stride_kd, D, MODE, WRITE_OTHER, IS_FP16, PRECISION, DOT_FP32,
            BLOCK_M, BLOCK_N, BLOCK_D,
        )  # fmt: skip
    _store_owned(owner_acc, DQ, DK, owner, B, N, NUM_SPLITS, D, MODE, BLOCK_M, BLOCK_N, BLOCK_D)
    if COMPUTE_DSCALE:
        tl.store(DSCALE_PART + owner * NUM_SPLITS + split, dscale_acc)


# ------------------------------------------------------------------------------------- configurations


def _configs(shapes: list[tuple[int, int, int, int, int]]) -> list:
    """Triton configs from rows (BLOCK_M, BLOCK_N, BLOCK_D, num_warps, num_stages)."""
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_D": dd}, num_warps=w, num_stages=st)
        for m, n, dd, w, st in shapes
    ]


def _hopper_forward_configs() -> list:
    """Forward configs for sm_90 (H100/H200), also valid on sm_80: (M, N, D blocks, warps, stages).

    Screened by compiling for sm_90 without a GPU (tests/losses/triton_compile_check.py, d = 768, bf16):
    all fit in shared memory and spill at most a few bytes; 256-wide tiles (which spilled >300 B) were
    dropped. Timing-based selection among these happens on the device (autotune).
    """
    shapes = [
        (128, 128, 64, 8, 3),
        (128, 128, 32, 8, 4),
        (128, 128, 128, 8, 2),
        (128, 64, 64, 4, 3),
        (64, 128, 64, 4, 3),
        (64, 64, 64, 4, 4),
        (64, 64, 32, 4, 4),
        (64, 64, 16, 4, 4),
    ]
    return _configs(shapes)


def _hopper_backward_configs() -> list:
    """Backward configs (more live registers: S, dS and an owned dq/dk block); screened like the forward."""
    shapes = [
        (64, 64, 64, 4, 2),
        (64, 128, 64, 8, 2),
        (128, 64, 64, 8, 2),
        (128, 128, 32, 8, 3),
        (128, 64, 128, 8, 2),
        (128, 64, 32, 8, 3),
        (64, 64, 32, 4, 3),
        (64, 64, 16, 4, 3),
    ]
    return _configs(shapes)


def _pow2_floor(value: int) -> int:
    return 1 << (max(1, int(value)).bit_length() - 1)


def _pow2_ceil(value: int) -> int:
    return 1 << max(0, int(value) - 1).bit_length()


def _block_cap(tile: int | None) -> int:
    """Upper bound on a block size from the caller's tile hint (None / <= 0: unbounded)."""
    if tile is None or tile <= 0:
        return 1 << 30
    return max(_MIN_BLOCK, _pow2_floor(tile))


def _filter_configs(configs: list, d: int, cap_m: int, cap_n: int) -> list:
    """Keep configs whose blocks respect the tile caps and whose BLOCK_D does not exceed next_pow2(d)."""
    max_d = max(_MIN_BLOCK, _pow2_ceil(d))
    kept = [
        c
        for c in configs
        if c.kwargs["BLOCK_M"] <= cap_m and c.kwargs["BLOCK_N"] <= cap_n and c.kwargs["BLOCK_D"] <= max_d
    ]
    if kept:
        return kept
    # Caps below every listed config: fall back to the smallest legal blocks.
    m, n = min(cap_m, 64), min(cap_n, 64)
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_D": min(64, max_d)}, num_warps=4, num_stages=2)]


@functools.lru_cache(maxsize=64)
def _autotuned_forward(d: int, cap_m: int, cap_n: int):
    """Autotuner over the forward configs allowed for this (d, tile caps); keyed on size buckets."""
    configs = _filter_configs(_hopper_forward_configs(), d, cap_m, cap_n)
    tuner = triton.autotune(configs=configs, key=["B_BUCKET", "N_BUCKET", "D", "HAS_IDS", "COMPUTE_COL"])(
        _fwd_kernel
    )
    return tuner, configs


@functools.lru_cache(maxsize=64)
def _autotuned_backward(d: int, cap_m: int, cap_n: int):
    """Autotuner over the backward configs; accumulated outputs are zeroed between tuning runs."""
    configs = _filter_configs(_hopper_backward_configs(), d, cap_m, cap_n)
    tuner = triton.autotune(
        configs=configs,
        key=["B_BUCKET", "N_BUCKET", "D", "HAS_IDS", "HAS_COL", "MODE", "WRITE_OTHER"],
        reset_to_zero=["DQ", "DK", "DSCALE_PART"],
    )(_bwd_kernel)
    return tuner, configs


def _interpreter_config(tile_b: int | None, tile_n: int | None) -> dict[str, int]:
    """Fixed small blocks for the CPU interpreter (the tile hints pick 16 or 32)."""
    cap_m = min(_block_cap(tile_b), _INTERPRET_BLOCK_MAX)
    cap_n = min(_block_cap(tile_n), _INTERPRET_BLOCK_MAX)
    return {"BLOCK_M": cap_m, "BLOCK_N": cap_n, "BLOCK_D": _INTERPRET_BLOCK_D}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 2  # interpreter: a "GPU" with 2 SMs keeps grids small but still exercises groups and splits
    return torch.cuda.get_device_properties(device).multi_processor_count


# ------------------------------------------------------------------------------------------ host side


def _check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: torch.Tensor | float,
    labels: torch.Tensor,
    q_ids: torch.Tensor | None,
    k_ids: torch.Tensor | None,
) -> None:
    """Raise ConfigError for shapes, dtypes, devices or labels the kernels cannot take (one line each)."""
    if q.dim() != 2 or k.dim() != 2:
        raise ConfigError(
            f"q and k must be 2-D (rows, dim); got shapes {tuple(q.shape)} and {tuple(k.shape)}"
        )
    if q.shape[1] != k.shape[1]:
        raise ConfigError(f"q and k must share the feature dimension; got {q.shape[1]} and {k.shape[1]}")
    if q.shape[1] == 0:
        raise ConfigError("q and k have feature dimension 0")
    if q.dtype != k.dtype:
        raise ConfigError(f"q and k must have the same dtype; got {q.dtype} and {k.dtype}")
    if q.dtype not in _SUPPORTED_DTYPES:
        raise ConfigError(f"Triton loss kernels support float32/bfloat16/float16 inputs; got {q.dtype}")
    if q.device != k.device:
        raise ConfigError(f"q and k must be on the same device; got {q.device} and {k.device}")
    b, n = q.shape[0], k.shape[0]
    if labels.shape != (b,) or labels.dtype not in (torch.int64, torch.int32):
        raise ConfigError(
            f"labels must be an integer tensor of shape ({b},); got {labels.dtype} {tuple(labels.shape)}"
        )
    if labels.device != q.device:
        raise ConfigError(f"labels must be on {q.device}; got {labels.device}")
    if (q_ids is None) != (k_ids is None):
        raise ConfigError("q_ids and k_ids must be given together (or both None)")
    if q_ids is not None and k_ids is not None:
        if q_ids.shape != (b,) or k_ids.shape != (n,):
            raise ConfigError(
                f"q_ids must have shape ({b},) and k_ids ({n},); "
                f"got {tuple(q_ids.shape)} and {tuple(k_ids.shape)}"
            )
        if q_ids.device != q.device or k_ids.device != q.device:
            raise ConfigError(f"q_ids and k_ids must be on {q.device}")
    if torch.as_tensor(scale).numel() != 1:
        raise ConfigError(f"scale must be a scalar; got shape {tuple(torch.as_tensor(scale).shape)}")
    if b > 0:
        low, high = (int(v) for v in torch.aminmax(labels))
        # −1: "no positive among these keys" (a foreign key block of the distributed ring); the kernels
        # already treat it like a padding row's label (never equal to a column index).
        if low < -1 or high >= n:
            bad = int(((labels < -1) | (labels >= n)).nonzero()[0, 0])
            raise ConfigError(f"labels[{bad}] = {int(labels[bad])} is not a key index in [0, {n}) or -1")


def _require_supported(q: torch.Tensor) -> None:
    """Checked after all shape/label checks, so those errors read the same on CPU and CUDA."""
    if not triton_supported(q):
        raise ConfigError(
            f"Triton loss kernels need CUDA tensors (got {q.device}); on CPU use the torch tiled path, "
            "or set TRITON_INTERPRET=1 before importing this module to run Triton's interpreter"
        )


def _scale_tensor(scale: torch.Tensor | float, device: torch.device) -> torch.Tensor:
    """The logit scale as a 1-element fp32 tensor on ``device`` (read by the kernels through a pointer)."""
    return torch.as_tensor(scale).detach().reshape(1).to(device=device, dtype=torch.float32).contiguous()


def _int32_labels_and_ids(
    labels: torch.Tensor, q_ids: torch.Tensor | None, k_ids: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int32 labels and ids for the kernels (int32 index tiles need half the registers of int64).

    Ids are only compared for equality, so ids outside the int32 range are renumbered with
    ``torch.unique`` (O((b + n) log(b + n))). Without ids, the labels stand in as unused placeholders.
    """
    labels32 = labels.to(torch.int32).contiguous()
    if q_ids is None or k_ids is None:
        return labels32, labels32, labels32
    both = torch.cat([q_ids.reshape(-1), k_ids.reshape(-1)]).to(torch.int64)
    low, high = (int(v) for v in torch.aminmax(both)) if both.numel() else (0, 0)
    if low < -(2**31) or high >= 2**31:
        both = torch.unique(both, return_inverse=True)[1]
    both = both.to(torch.int32)
    return labels32, both[: q_ids.numel()].contiguous(), both[q_ids.numel() :].contiguous()


def _narrow_strides(x: torch.Tensor) -> torch.Tensor:
    """Tile-local offsets are int32: make ``x`` contiguous if a stride times a block could overflow them."""
    if max(x.stride()) * 256 >= 2**31:
        return x.contiguous()
    return x


def _precision(dtype: torch.dtype, device: torch.device) -> str:
    """fp32 inputs follow torch's matmul precision setting: TF32 unless it is "highest"."""
    if device.type == "cpu":
        return "ieee"  # interpreter: exact numpy dots (bf16 operands are upcast, see DOT_FP32)
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def _dot_fp32(q: torch.Tensor) -> bool:
    """Upcast dot operands to fp32: only for bf16 under the CPU interpreter (its tl.dot mishandles bf16)."""
    return q.device.type == "cpu" and q.dtype == torch.bfloat16


def _size_bucket(size: int) -> int:
    return _pow2_ceil(max(1, size))


def _forward_layout(
    b: int, n: int, max_m: int, max_n: int, sms: int, groups: int | None, splits: int | None
) -> tuple[int, int]:
    """(row groups G, key splits S) valid for every config: each program gets >= 1 row block and key tile.

    G is capped at 2·SMs (bounding the (G, n) column-partial buffer) and balanced so that every group gets
    the same number of row blocks (± 1); key splits only add parallelism when b is small.
    """
    row_blocks = math.ceil(b / max_m)
    key_tiles = math.ceil(n / max_n)
    if groups is None:
        cap = 2 * sms
        groups = row_blocks if row_blocks <= cap else math.ceil(row_blocks / math.ceil(row_blocks / cap))
    groups = max(1, min(groups, row_blocks))
    if splits is None:
        splits = max(1, (2 * sms) // groups)
    splits = max(1, min(splits, key_tiles))
    return groups, splits


def _on_input_device(fn):
    """Run ``fn`` with the CUDA device of its first argument current (Triton launches on the current one)."""

    @functools.wraps(fn)
    def wrapper(q: torch.Tensor, *args, **kwargs):
        guard = torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext()
        with guard:
            return fn(q, *args, **kwargs)

    return wrapper


@_on_input_device
def fused_lse_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: torch.Tensor,
    labels: torch.Tensor,
    q_ids: torch.Tensor | None,
    k_ids: torch.Tensor | None,
    compute_col: bool,
    tile_b: int | None,
    tile_n: int | None,
    *,
    num_row_groups: int | None = None,
    num_key_splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Row LSE, column LSE and positive logits of ``S = scale · q @ k.T`` in one pass over tiles.

    Args:
        q: ``(b, d)`` queries, fp32/bf16/fp16, CUDA (or CPU under ``TRITON_INTERPRET=1``); any strides.
        k: ``(n, d)`` keys, same dtype and device as ``q``.
        scale: logit scale, 0-dim (or 1-element) tensor; read in fp32.
        labels: ``(b,)`` int64 (or int32) index of each query's positive key in ``[0, n)``, or −1 for a
            query with no positive among these keys (``pos_logit`` is then undefined for that row).
        q_ids: ``(b,)`` int64 group ids or ``None``; with ``k_ids`` masks pairs of equal id that are not
            the positive (``S = -inf`` there).
        k_ids: ``(n,)`` int64 group ids or ``None``.
        compute_col: also compute the column LSE (CLIP's key → query direction).
        tile_b: upper bound on the row block (``None``/``<= 0`` or large values: autotuned freely).
        tile_n: upper bound on the key block.
        num_row_groups: override the number of row groups ``G`` (tuning/tests).
        num_key_splits: override the number of key splits ``S`` (tuning/tests).

    Returns:
        ``(row_lse (b,) fp32, col_lse (n,) fp32 or None, pos_logit (b,) fp32)``; ``col_lse[j] = -inf``
        for a key whose column is fully masked.

    Cost: ``2·b·n·d`` matmul FLOPs, ``2·b·n`` exps; extra memory ``4·(G·n + S·b)`` bytes.

    Example:
        >>> import torch
        >>> from hardbatch.losses.triton_kernels import fused_lse_forward, triton_supported
        >>> q, k = torch.randn(40, 8), torch.randn(40, 8)
        >>> if triton_supported(q):  # CUDA or TRITON_INTERPRET=1
        ...     row, col, pos = fused_lse_forward(q, k, torch.tensor(2.0), torch.arange(40), None, None,
        ...                                       True, 16, 16)
        ...     assert torch.allclose(row, torch.logsumexp(2 * q @ k.T, 1), atol=1e-4)
    """
    _check_inputs(q, k, scale, labels, q_ids, k_ids)
    _require_supported(q)
    b, d = q.shape
    n = k.shape[0]
    device = q.device
    f32 = torch.float32
    if b == 0:
        col = torch.full((n,), _NEG_INF, device=device, dtype=f32) if compute_col else None
        return torch.empty(0, device=device, dtype=f32), col, torch.empty(0, device=device, dtype=f32)
    has_ids = q_ids is not None
    labels32, q_ids32, k_ids32 = _int32_labels_and_ids(labels, q_ids, k_ids)
    q, k = _narrow_strides(q), _narrow_strides(k)
    scale_t = _scale_tensor(scale, device)
    sms = _sm_count(device)
    if interpreter_enabled() and device.type == "cpu":
        meta = _interpreter_config(tile_b, tile_n)
        kernel, max_m, max_n = _fwd_kernel, meta["BLOCK_M"], meta["BLOCK_N"]
    else:
        kernel, configs = _autotuned_forward(d, _block_cap(tile_b), _block_cap(tile_n))
        meta = {}
        max_m = max(c.kwargs["BLOCK_M"] for c in configs)
        max_n = max(c.kwargs["BLOCK_N"] for c in configs)
    groups, splits = _forward_layout(b, n, max_m, max_n, sms, num_row_groups, num_key_splits)
    row_part = torch.empty((splits, b), device=device, dtype=f32)
    col_part = torch.empty((groups, n) if compute_col else (1,), device=device, dtype=f32)
    # NaN until written: a label outside every key tile would surface instead of reading garbage.
    pos = torch.full((b,), float("nan"), device=device, dtype=f32)
    kernel[(groups, splits)](
        q, k, scale_t, labels32, q_ids32, k_ids32, row_part, col_part, pos, b, n,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), _size_bucket(b), _size_bucket(n),
        D=d, HAS_IDS=has_ids, COMPUTE_COL=bool(compute_col), PRECISION=_precision(q.dtype, device),
        DOT_FP32=_dot_fp32(q), **meta,
    )  # fmt: skip
    row_lse = row_part[0] if splits == 1 else _combine_partials(row_part)
    col_lse = _combine_partials(col_part) if compute_col else None
    return row_lse, col_lse, pos


def _combine_partials(part: torch.Tensor) -> torch.Tensor:
    """logsumexp over dim 0 of an (R, C) fp32 buffer, streamed by a small kernel."""
    rows, cols = part.shape
    if rows == 1:
        return part[0]
    out = torch.empty(cols, device=part.device, dtype=torch.float32)
    block = 128 if interpreter_enabled() and part.device.type == "cpu" else 1024
    _lse_combine_kernel[(math.ceil(cols / block),)](part, out, rows, cols, BLOCK=block)
    return out


def _backward_layout(
    b: int, n: int, block_m: int, block_n: int, sms: int, splits: int | None
) -> tuple[int, int]:
    """(row blocks, key splits) of the fast backward grid: split keys only when b alone is too few blocks."""
    row_blocks = math.ceil(b / block_m)
    key_tiles = math.ceil(n / block_n)
    if splits is None:
        splits = math.ceil(2 * sms / row_blocks)
    return row_blocks, max(1, min(splits, key_tiles))


@_on_input_device
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
    tile_b: int | None,
    tile_n: int | None,
    *,
    deterministic: bool | None = None,
    num_key_splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``Σ_i g_row[i]·(row_lse[i] − S[i, l_i]) + Σ_j g_col[j]·(col_lse[j] − S[i_j, j])``.

    Recomputes each ``S`` tile once (fast mode) and never stores anything ``b × n``; see the module
    docstring for the exact ``dS`` formula.

    Args:
        q, k, scale, labels, q_ids, k_ids: as given to :func:`fused_lse_forward`.
        row_lse: ``(b,)`` fp32 from the forward.
        col_lse: ``(n,)`` fp32 from the forward, or ``None`` (then ``g_col`` must be ``None``).
        g_row: ``(b,)`` upstream gradient of each row term.
        g_col: ``(n,)`` upstream gradient of the column terms, summed per positive key, or ``None``.
        tile_b, tile_n: upper bounds on the block sizes (as in the forward).
        deterministic: ``True`` uses two atomic-free kernels (bitwise reproducible, 8·b·n·d FLOPs instead
            of 6·b·n·d); ``None`` follows ``torch.are_deterministic_algorithms_enabled()``.
        num_key_splits: override the key-split count of the fast kernel (tuning/tests).

    Returns:
        ``(dq (b, d) fp32, dk (n, d) fp32, dscale 0-dim fp32)``.

    Example:
        >>> import torch
        >>> from hardbatch.losses.triton_kernels import fused_backward, fused_lse_forward, triton_supported
        >>> q, k, s, lab = torch.randn(20, 8), torch.randn(20, 8), torch.tensor(3.0), torch.arange(20)
        >>> if triton_supported(q):
        ...     row, col, _ = fused_lse_forward(q, k, s, lab, None, None, True, 16, 16)
        ...     g = torch.full((20,), 0.025)
        ...     dq, dk, dscale = fused_backward(q, k, s, lab, None, None, row, col, g, g, 16, 16)
    """
    _check_inputs(q, k, scale, labels, q_ids, k_ids)
    b, d = q.shape
    n = k.shape[0]
    if (g_col is None) != (col_lse is None):
        raise ConfigError("g_col and col_lse must be given together (or both None)")
    if row_lse.shape != (b,) or g_row.shape != (b,):
        raise ConfigError(f"row_lse and g_row must have shape ({b},)")
    if col_lse is not None and g_col is not None and (col_lse.shape != (n,) or g_col.shape != (n,)):
        raise ConfigError(f"col_lse and g_col must have shape ({n},)")
    _require_supported(q)
    device = q.device
    f32 = torch.float32
    dq = torch.zeros((b, d), device=device, dtype=f32)
    dk = torch.zeros((n, d), device=device, dtype=f32)
    if b == 0 or n == 0:
        return dq, dk, torch.zeros((), device=device, dtype=f32)
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    has_ids = q_ids is not None
    labels32, q_ids32, k_ids32 = _int32_labels_and_ids(labels, q_ids, k_ids)
    q, k = _narrow_strides(q), _narrow_strides(k)
    has_col = col_lse is not None
    row_lse32 = row_lse.to(f32).contiguous()
    g_row32 = g_row.to(f32).contiguous()
    col_lse32 = col_lse.to(f32).contiguous() if has_col else row_lse32
    g_col32 = g_col.to(f32).contiguous() if g_col is not None else g_row32
    scale_t = _scale_tensor(scale, device)
    sms = _sm_count(device)
    interpret = interpreter_enabled() and device.type == "cpu"
    if interpret:
        meta = _interpreter_config(tile_b, tile_n)
        kernel, configs = _bwd_kernel, [triton.Config(dict(meta))]
        meta_kwargs = meta
    else:
        kernel, configs = _autotuned_backward(d, _block_cap(tile_b), _block_cap(tile_n))
        meta_kwargs = {}
    common = dict(
        D=d, HAS_IDS=has_ids, HAS_COL=has_col, IS_FP16=q.dtype == torch.float16,
        PRECISION=_precision(q.dtype, device), DOT_FP32=_dot_fp32(q), **meta_kwargs,
    )  # fmt: skip
    args_head = (q, k, scale_t, labels32, q_ids32, k_ids32, row_lse32, col_lse32, g_row32, g_col32)
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1))
    buckets = (_size_bucket(b), _size_bucket(n))
    dummy = torch.zeros(1, device=device, dtype=f32)
    if deterministic:
        # dq: one program per row block over all keys; dk: one program per key tile over all rows.
        # Unused outputs get a dummy so one kernel's autotuning never zeroes the other's results.
        max_programs = max(math.ceil(b / c.kwargs["BLOCK_M"]) for c in configs)
        dscale_part = torch.zeros(max_programs, device=device, dtype=f32)
        kernel[lambda meta: (math.ceil(b / meta["BLOCK_M"]), 1)](
            *args_head, dq, dummy, dscale_part, b, n, *strides, *buckets,
            MODE=0, WRITE_OTHER=False, COMPUTE_DSCALE=True, **common,
        )  # fmt: skip
        kernel[lambda meta: (math.ceil(n / meta["BLOCK_N"]), 1)](
            *args_head, dummy, dk, dummy, b, n, *strides, *buckets,
            MODE=1, WRITE_OTHER=False, COMPUTE_DSCALE=False, **common,
        )  # fmt: skip
    else:

        def layout(meta: dict) -> tuple[int, int]:
            return _backward_layout(b, n, meta["BLOCK_M"], meta["BLOCK_N"], sms, num_key_splits)

        max_programs = max(math.prod(layout(c.kwargs)) for c in configs)
        dscale_part = torch.zeros(max_programs, device=device, dtype=f32)
        kernel[layout](
            *args_head, dq, dk, dscale_part, b, n, *strides, *buckets,
            MODE=0, WRITE_OTHER=True, COMPUTE_DSCALE=True, **common,
        )  # fmt: skip
    dscale = dscale_part.double().sum().to(f32)
    return dq, dk, dscale
