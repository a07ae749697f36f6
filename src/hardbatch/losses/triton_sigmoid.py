"""Triton kernels of the exact tiled sigmoid (SigLIP) loss: the CUDA path of ``sigmoid_tiled``'s contract.

Both backends (this file and ``sigmoid_tiled.py``) implement

``sigmoid_forward(q, k, scale, bias, labels, q_ids, k_ids, tile_b, tile_n) -> (b,) fp32``
    query i's loss over these keys, ``row_i = Σ_j −log σ(z_ij·x_ij)`` with ``x_ij = scale·q_i·k_j + bias``,
    ``z_ij = +1`` for ``j == labels[i]`` and −1 otherwise, masked pairs (``q_ids[i] == k_ids[j]``, j not
    i's positive) left out; label −1: no positive among these keys (a foreign block of the ring).

``sigmoid_backward(q, k, scale, bias, labels, q_ids, k_ids, g_row, tile_b, tile_n) -> (dq, dk, dscale, dbias)``
    gradients of ``Σ_i g_row[i]·row_i``: with ``dx_ij = g_row[i]·(σ(x_ij) − [j == labels[i]])`` (0 where
    masked), ``dq = scale·dx @ k``, ``dk = scale·dxᵀ @ q``, ``dscale = Σ dx ⊙ (q @ kᵀ)``, ``dbias = Σ dx``.

Every (row block, key tile) of the logits is computed once in the forward (one kernel, per-query sums
in registers) and once in the backward (one kernel: ``dx`` formed in registers feeds ``dq`` and ``dk``);
nothing b × n is allocated. The backward reuses the InfoNCE kernels' tile walk and gradient push
(``triton_kernels._owned_tile`` / ``_push_tile_grads``): row-owned programs, ``dk`` by fp32 atomics, or
with ``deterministic=True`` two atomic-free kernels (row-owned ``dq``, key-owned ``dk``).

Numerics: ``−log σ(z·x) = softplus(−z·x)`` is evaluated directly for positives and negatives
(``max(t, 0) + log1p(e^{−|t|})``, log1p by Goldberg's correction), never as ``softplus(x) − x``, so a
confident positive costs no cancellation; ``σ − δ`` for a positive is ``−σ(−x)``, likewise. Dot products
accumulate in fp32 from inputs read in their own dtype (bf16/fp16 tensor-core ``tl.dot``; fp32 inputs
follow torch's matmul precision, TF32 unless "highest"); scale, bias, softplus, σ, the per-query sums and
the gradient accumulators are fp32; ``dx·scale`` is rounded to the input dtype for the two gradient
matmuls (FlashAttention's choice; fp16 with a per-tile rescale).

Cost (b queries, n keys, d dims): matmul FLOPs 2·b·n·d forward, 6·b·n·d backward (8·b·n·d deterministic),
≈ 2·b·n exp/log forward and b·n exp + b·n divisions backward. Memory: the inputs, fp32 ``dq`` (b, d) and
``dk`` (n, d), an (S, b) fp32 buffer of per-split row sums (S ≤ key tiles, chosen so about 2 programs run
per SM) and O(programs) scalars for the scale / bias partials: O((b + n)·d), independent of b·n.

``TRITON_INTERPRET=1`` set before importing this module (and ``triton_kernels``) runs the kernels on CPU
tensors in Triton's interpreter (tests only).

References:
    Zhai et al., "Sigmoid Loss for Language Image Pre-Training" (SigLIP), arXiv 2303.15343; Dao,
    "FlashAttention-2", arXiv 2307.08691 (recompute in backward); Goldberg, "What every computer
    scientist should know about floating-point arithmetic" (1991), log1p via ``log(u)·x/(u − 1)``.
"""

from __future__ import annotations

import functools

import torch

from hardbatch.errors import ConfigError
from hardbatch.losses import triton_kernels as tk
from hardbatch.losses.triton_kernels import tl, triton  # imported (or reported missing) there

__all__ = [
    "backward_flops",
    "forward_flops",
    "interpreter_enabled",
    "sigmoid_backward",
    "sigmoid_forward",
    "triton_supported",
]

# The tile walks and gradient matmuls are the InfoNCE kernels': same FLOP counts, devices and dtypes.
forward_flops = tk.forward_flops
backward_flops = tk.backward_flops
interpreter_enabled = tk.interpreter_enabled
triton_supported = tk.triton_supported


# --------------------------------------------------------------------------------------------- kernels


@triton.jit
def _softplus(t):
    """``log(1 + e^t)`` in fp32: no overflow for large t, full relative accuracy for very negative t."""
    e = tl.exp(-tl.abs(t))
    u = 1.0 + e
    # log1p(e) = log(u)·e/(u − 1) cancels the rounding of 1 + e; where u rounds to 1, log1p(e) = e.
    log1p = tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))
    return tl.maximum(t, 0.0) + log1p


@triton.jit
def _sigmoid(t):
    """``σ(t)`` in fp32 from ``e^{−|t|}`` (never overflows; exact 0/1 limits)."""
    e = tl.exp(-tl.abs(t))
    inv = 1.0 / (1.0 + e)
    return tl.where(t >= 0.0, inv, e * inv)


@triton.jit
def _fwd_kernel(
    Q,
    K,
    SCALE,
    BIAS,
    LABELS,
    Q_IDS,
    K_IDS,
    ROW_PART,
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
    PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Program (row block r, split s): ROW_PART[s, rows of r] = Σ over key tiles s, s+S, ... of the losses.

    B_BUCKET / N_BUCKET are unused here: they are autotune keys (power-of-two size buckets).
    """
    row_block = tl.program_id(0)
    split = tl.program_id(1)
    NUM_SPLITS = tl.num_programs(1)
    scale = tl.load(SCALE).to(tl.float32)
    bias = tl.load(BIAS).to(tl.float32)
    acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    rows = row_block * BLOCK_M + tl.arange(0, BLOCK_M)
    for kt in range(split, tl.cdiv(N, BLOCK_N), NUM_SPLITS):
        _, _, _, _, _, _, _, _, dots, valid, is_pos = tk._owned_tile(
            row_block, kt, Q, K, LABELS, Q_IDS, K_IDS, B, N, stride_qb, stride_qd, stride_kn, stride_kd,
            D, 0, HAS_IDS, PRECISION, DOT_FP32, BLOCK_M, BLOCK_N, BLOCK_D,
        )  # fmt: skip
        x = dots * scale + bias
        # −log σ(z·x) = softplus(−z·x): softplus(−x) for the positive, softplus(x) for negatives.
        loss = _softplus(tl.where(is_pos, -x, x))
        acc += tl.sum(tl.where(valid, loss, 0.0), axis=1)
    tl.store(ROW_PART + split.to(tl.int64) * B + rows, acc, mask=rows < B)


@triton.jit
def _bwd_kernel(
    Q,
    K,
    SCALE,
    BIAS,
    LABELS,
    Q_IDS,
    K_IDS,
    G_ROW,
    DQ,
    DK,
    DSCALE_PART,
    DBIAS_PART,
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
    """Recompute each tile once, form ``dx = g·(σ(x) − δ)`` and push it into dq / dk.

    Grid and ownership as ``triton_kernels._bwd_kernel`` (MODE 0 row-owned, MODE 1 key-owned, WRITE_OTHER:
    atomics into the other side). With COMPUTE_DSCALE, DSCALE_PART / DBIAS_PART[program] receive this
    program's ``Σ dx·(q·k)`` and ``Σ dx``. DQ/DK are contiguous fp32 (rows, D).
    """
    owner = tl.program_id(0)
    split = tl.program_id(1)
    NUM_SPLITS = tl.num_programs(1)
    scale = tl.load(SCALE).to(tl.float32)
    bias = tl.load(BIAS).to(tl.float32)
    owner_acc, num_inner = tk._owner_accumulator(B, N, MODE, BLOCK_M, BLOCK_N, BLOCK_D)
    dscale_acc = tl.sum(tl.zeros((BLOCK_M,), dtype=tl.float32), axis=0)
    dbias_acc = dscale_acc
    for inner in range(split, num_inner, NUM_SPLITS):
        start_m, start_n, rows, _, row_ok, col_ok, Q_blk, K_blk, dots, valid, is_pos = tk._owned_tile(
            owner, inner, Q, K, LABELS, Q_IDS, K_IDS, B, N, stride_qb, stride_qd, stride_kn, stride_kd,
            D, MODE, HAS_IDS, PRECISION, DOT_FP32, BLOCK_M, BLOCK_N, BLOCK_D,
        )  # fmt: skip
        x = dots * scale + bias
        g_row = tl.load(G_ROW + rows, mask=row_ok, other=0.0)
        # σ(x) − 1 = −σ(−x) for the positive: no cancellation when it is already confident.
        sig = _sigmoid(tl.where(is_pos, -x, x))
        dx = g_row[:, None] * tl.where(is_pos, -sig, sig)
        dx = tl.where(valid, dx, 0.0)
        if COMPUTE_DSCALE:
            dscale_acc += tl.sum(tl.sum(dx * dots, axis=1), axis=0)
            dbias_acc += tl.sum(tl.sum(dx, axis=1), axis=0)
        owner_acc = tk._push_tile_grads(
            dx * scale, Q_blk, K_blk, DQ, DK, start_m, start_n, row_ok, col_ok, owner_acc, NUM_SPLITS,
            stride_qb, stride_qd, stride_kn, stride_kd, D, MODE, WRITE_OTHER, IS_FP16, PRECISION, DOT_FP32,
            BLOCK_M, BLOCK_N, BLOCK_D,
        )  # fmt: skip
    tk._store_owned(owner_acc, DQ, DK, owner, B, N, NUM_SPLITS, D, MODE, BLOCK_M, BLOCK_N, BLOCK_D)
    if COMPUTE_DSCALE:
        tl.store(DSCALE_PART + owner * NUM_SPLITS + split, dscale_acc)
        tl.store(DBIAS_PART + owner * NUM_SPLITS + split, dbias_acc)


# ------------------------------------------------------------------------------------- configurations


@functools.lru_cache(maxsize=64)
def _autotuned_forward(d: int, cap_m: int, cap_n: int):
    """Autotuner over the InfoNCE forward configs allowed for (d, tile caps); the row sums are reset."""
    configs = tk._filter_configs(tk._hopper_forward_configs(), d, cap_m, cap_n)
    tuner = triton.autotune(
        configs=configs, key=["B_BUCKET", "N_BUCKET", "D", "HAS_IDS"], reset_to_zero=["ROW_PART"]
    )(_fwd_kernel)
    return tuner, configs


@functools.lru_cache(maxsize=64)
def _autotuned_backward(d: int, cap_m: int, cap_n: int):
    """Autotuner over the InfoNCE backward configs (same register budget: x, dx and an owned block)."""
    configs = tk._filter_configs(tk._hopper_backward_configs(), d, cap_m, cap_n)
    tuner = triton.autotune(
        configs=configs,
        key=["B_BUCKET", "N_BUCKET", "D", "HAS_IDS", "MODE", "WRITE_OTHER"],
        reset_to_zero=["DQ", "DK", "DSCALE_PART", "DBIAS_PART"],
    )(_bwd_kernel)
    return tuner, configs


def _kernel_and_configs(which: str, d: int, tile_b: int | None, tile_n: int | None, device: torch.device):
    """(launchable kernel, its configs, fixed meta-parameters): interpreter blocks on CPU, else autotuned."""
    if tk.interpreter_enabled() and device.type == "cpu":
        meta = tk._interpreter_config(tile_b, tile_n)
        kernel = _fwd_kernel if which == "fwd" else _bwd_kernel
        return kernel, [triton.Config(dict(meta))], meta
    build = _autotuned_forward if which == "fwd" else _autotuned_backward
    kernel, configs = build(d, tk._block_cap(tile_b), tk._block_cap(tile_n))
    return kernel, configs, {}


# ------------------------------------------------------------------------------------------ host side


def _check(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: torch.Tensor | float,
    bias: torch.Tensor | float,
    labels: torch.Tensor,
    q_ids: torch.Tensor | None,
    k_ids: torch.Tensor | None,
) -> None:
    """The InfoNCE kernels' input checks (shapes, dtypes, devices, labels in [-1, n)) plus the bias."""
    tk._check_inputs(q, k, scale, labels, q_ids, k_ids)
    if torch.as_tensor(bias).numel() != 1:
        raise ConfigError(f"bias must be a scalar; got shape {tuple(torch.as_tensor(bias).shape)}")


def _launch_args(q, k, scale, bias, labels, q_ids, k_ids) -> tuple:
    """Kernel operands: inputs with int32-safe strides, fp32 scale/bias cells, int32 labels and ids."""
    labels32, q_ids32, k_ids32 = tk._int32_labels_and_ids(labels, q_ids, k_ids)
    q, k = tk._narrow_strides(q), tk._narrow_strides(k)
    device = q.device
    return q, k, tk._scale_tensor(scale, device), tk._scale_tensor(bias, device), labels32, q_ids32, k_ids32


@tk._on_input_device
def sigmoid_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    labels: torch.Tensor,
    q_ids: torch.Tensor | None,
    k_ids: torch.Tensor | None,
    tile_b: int | None = None,
    tile_n: int | None = None,
    *,
    num_key_splits: int | None = None,
) -> torch.Tensor:
    """Per-query sigmoid loss over these keys, one pass over (row block, key tile) pairs.

    Args:
        q: ``(b, d)`` queries, fp32/bf16/fp16, CUDA (or CPU under ``TRITON_INTERPRET=1``); any strides.
        k: ``(n, d)`` keys, same dtype and device as ``q``.
        scale: logit scale, 0-dim (or 1-element) tensor or float; read in fp32.
        bias: logit bias, 0-dim (or 1-element) tensor or float; read in fp32.
        labels: ``(b,)`` int64 (or int32) index of each query's positive in ``[0, n)``, or −1 (none here).
        q_ids: ``(b,)`` int64 ids or ``None``; with ``k_ids`` leaves out pairs of equal id that are not
            the positive.
        k_ids: ``(n,)`` int64 ids or ``None``.
        tile_b: upper bound on the row block (``None``/``<= 0``: autotuned freely).
        tile_n: upper bound on the key block.
        num_key_splits: override the number of key splits ``S`` (tuning/tests).

    Returns:
        ``(b,)`` fp32 ``Σ_j −log σ(z_ij·x_ij)`` over the unmasked keys.

    Cost: ``2·b·n·d`` matmul FLOPs, ≈ 2·b·n exp/log; extra memory ``4·S·b`` bytes.

    Example:
        >>> import torch
        >>> from hardbatch.losses.triton_sigmoid import sigmoid_forward
        >>> from hardbatch.losses.triton_kernels import triton_supported
        >>> q, k = torch.randn(40, 8), torch.randn(40, 8)
        >>> if triton_supported(q):  # CUDA or TRITON_INTERPRET=1
        ...     x = 2 * q @ k.T - 1
        ...     z = 2 * torch.eye(40) - 1
        ...     want = -torch.nn.functional.logsigmoid(z * x).sum(1)
        ...     got = sigmoid_forward(q, k, torch.tensor(2.0), torch.tensor(-1.0), torch.arange(40), None, None)
        ...     assert torch.allclose(got, want, atol=1e-4)
    """
    _check(q, k, scale, bias, labels, q_ids, k_ids)
    tk._require_supported(q)
    b, d = q.shape
    n = k.shape[0]
    if b == 0 or n == 0:
        return torch.zeros(b, device=q.device, dtype=torch.float32)
    has_ids = q_ids is not None
    q, k, scale_t, bias_t, labels32, q_ids32, k_ids32 = _launch_args(q, k, scale, bias, labels, q_ids, k_ids)
    sms = tk._sm_count(q.device)
    kernel, configs, meta = _kernel_and_configs("fwd", d, tile_b, tile_n, q.device)

    def layout(m: dict) -> tuple[int, int]:
        return tk._backward_layout(b, n, m["BLOCK_M"], m["BLOCK_N"], sms, num_key_splits)

    # Zeros: rows of splits a smaller config does not use must add nothing (reset again after tuning).
    row_part = torch.zeros(
        (max(layout(c.kwargs)[1] for c in configs), b), device=q.device, dtype=torch.float32
    )
    kernel[layout](
        q, k, scale_t, bias_t, labels32, q_ids32, k_ids32, row_part, b, n,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), tk._size_bucket(b), tk._size_bucket(n),
        D=d, HAS_IDS=has_ids, PRECISION=tk._precision(q.dtype, q.device), DOT_FP32=tk._dot_fp32(q), **meta,
    )  # fmt: skip
    return row_part[0] if row_part.shape[0] == 1 else row_part.sum(0)


@tk._on_input_device
def sigmoid_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    labels: torch.Tensor,
    q_ids: torch.Tensor | None,
    k_ids: torch.Tensor | None,
    g_row: torch.Tensor,
    tile_b: int | None = None,
    tile_n: int | None = None,
    *,
    deterministic: bool | None = None,
    num_key_splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``Σ_i g_row[i]·row_i`` w.r.t. q, k, scale and bias, recomputing each tile once.

    Args:
        q, k, scale, bias, labels, q_ids, k_ids, tile_b, tile_n: as for :func:`sigmoid_forward`.
        g_row: ``(b,)`` upstream gradient of each query's loss (read in fp32).
        deterministic: ``True`` uses two atomic-free kernels (bitwise reproducible, 8·b·n·d FLOPs instead
            of 6·b·n·d); ``None`` follows ``torch.are_deterministic_algorithms_enabled()``.
        num_key_splits: override the key-split count of the fast kernel (tuning/tests).

    Returns:
        ``(dq (b, d) fp32, dk (n, d) fp32, dscale 0-dim fp32, dbias 0-dim fp32)``.

    Cost: ``6·b·n·d`` matmul FLOPs (``8·b·n·d`` deterministic), ≈ b·n exps; extra memory: the fp32
    gradients and two O(programs) partial vectors.

    Example:
        >>> import torch
        >>> from hardbatch.losses.triton_sigmoid import sigmoid_backward
        >>> from hardbatch.losses.triton_kernels import triton_supported
        >>> q, k, s, bias = torch.randn(20, 8), torch.randn(30, 8), torch.tensor(3.0), torch.tensor(-2.0)
        >>> if triton_supported(q):
        ...     dq, dk, ds, db = sigmoid_backward(q, k, s, bias, torch.arange(20), None, None, torch.ones(20))
        ...     assert dq.shape == (20, 8) and dk.shape == (30, 8) and ds.dim() == db.dim() == 0
    """
    _check(q, k, scale, bias, labels, q_ids, k_ids)
    b, d = q.shape
    n = k.shape[0]
    if g_row.shape != (b,):
        raise ConfigError(f"g_row must have shape ({b},); got {tuple(g_row.shape)}")
    tk._require_supported(q)
    device, f32 = q.device, torch.float32
    dq = torch.zeros((b, d), device=device, dtype=f32)
    dk = torch.zeros((n, d), device=device, dtype=f32)
    if b == 0 or n == 0:
        return dq, dk, torch.zeros((), device=device, dtype=f32), torch.zeros((), device=device, dtype=f32)
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    has_ids = q_ids is not None
    q, k, scale_t, bias_t, labels32, q_ids32, k_ids32 = _launch_args(q, k, scale, bias, labels, q_ids, k_ids)
    g_row32 = g_row.to(device=device, dtype=f32).contiguous()
    sms = tk._sm_count(device)
    kernel, configs, meta = _kernel_and_configs("bwd", d, tile_b, tile_n, device)
    common = dict(
        D=d, HAS_IDS=has_ids, IS_FP16=q.dtype == torch.float16, PRECISION=tk._precision(q.dtype, device),
        DOT_FP32=tk._dot_fp32(q), **meta,
    )  # fmt: skip
    head = (q, k, scale_t, bias_t, labels32, q_ids32, k_ids32, g_row32)
    tail = (b, n, q.stride(0), q.stride(1), k.stride(0), k.stride(1), tk._size_bucket(b), tk._size_bucket(n))
    dummy = torch.zeros(1, device=device, dtype=f32)
    if deterministic:
        # dq (and the scalar partials): one program per row block over all keys; dk: one per key tile.
        # Unused outputs get a dummy so one kernel's autotuning never zeroes the other's results.
        programs = max(-(-b // c.kwargs["BLOCK_M"]) for c in configs)
        dscale_part = torch.zeros(programs, device=device, dtype=f32)
        dbias_part = torch.zeros(programs, device=device, dtype=f32)
        kernel[lambda m: (-(-b // m["BLOCK_M"]), 1)](
            *head, dq, dummy, dscale_part, dbias_part, *tail,
            MODE=0, WRITE_OTHER=False, COMPUTE_DSCALE=True, **common,
        )  # fmt: skip
        kernel[lambda m: (-(-n // m["BLOCK_N"]), 1)](
            *head, dummy, dk, dummy, dummy, *tail, MODE=1, WRITE_OTHER=False, COMPUTE_DSCALE=False, **common
        )  # fmt: skip
    else:

        def layout(m: dict) -> tuple[int, int]:
            return tk._backward_layout(b, n, m["BLOCK_M"], m["BLOCK_N"], sms, num_key_splits)

        programs = max(layout(c.kwargs)[0] * layout(c.kwargs)[1] for c in configs)
        dscale_part = torch.zeros(programs, device=device, dtype=f32)
        dbias_part = torch.zeros(programs, device=device, dtype=f32)
        kernel[layout](
            *head, dq, dk, dscale_part, dbias_part, *tail,
            MODE=0, WRITE_OTHER=True, COMPUTE_DSCALE=True, **common,
        )  # fmt: skip
    # Partials summed in float64 in a fixed order: reproducible, and no fp32 loss over many programs.
    return dq, dk, dscale_part.double().sum().to(f32), dbias_part.double().sum().to(f32)
