"""Exact InfoNCE / CLIP loss with O((b + n)·d) memory: fused bidirectional tiles, CPU/Triton/distributed.

One forward pass over (tile_b × tile_n) logit tiles yields the row log-sum-exp (query → key) and the column
log-sum-exp (key → query) with online max/sum merging; only the inputs and the LSE vectors are kept for
backward. The backward pass recomputes each tile once and forms the gradient of both directions together.

Complexity (b queries, n keys, d dims, W ranks each holding b and n of them):
    time   8·b·n·d FLOPs per rank against W·n keys (forward 2, backward 6), ≈2·b·n exponentials (CPU; 4·b·n CUDA torch);
           Inf-CL executes 20·b²·d for the symmetric loss.
    memory distributed="gather": O((b + W·n)·d) for inputs, gathered keys and fp32 gradient accumulators,
           O(b + W·n) LSE vectors; distributed="ring": O((b + n)·d) and O(b + n), independent of W;
           plus O(tile_b·tile_n) scratch. The b × n matrix is never allocated.
    comms  gather: forward all-gather of keys (W·n·d) and two all-reduces of the column LSE (W·n);
           backward all-reduce of the column gradient weights (W·n), reduce-scatter of key gradients
           (W·n·d, fp32) and one scalar all-reduce for the scale. ring (hardbatch.losses.ring): W − 1 P2P
           key-block hops per pass overlapped with the tiles, W hops of the travelling column LSE
           (forward) and fp32 key gradient (backward), one scalar all-reduce.

References:
    Cheng et al., "Breaking the Memory Barrier: Near Infinite Batch Size Scaling for Contrastive Loss"
    (Inf-CL), arXiv 2410.17243; Dao et al., FlashAttention (online softmax); Radford et al., CLIP.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from hardbatch.errors import ConfigError, MissingExtraError
from hardbatch.losses import tiled
from hardbatch.losses.distributed import all_reduce_lse, gather_keys, mean_over_ranks, reduce_scatter_rows
from hardbatch.losses.inputs import check_loss_inputs, parse_tile_size, per_row_weights, reduce_rows
from hardbatch.losses.ring import Ring, add_into, circulate, logaddexp_into, plan_call

__all__ = ["BACKENDS", "info_nce", "resolve_backend"]

BACKENDS = ("auto", "torch", "triton")
BACKEND_ENV = "HARDBATCH_LOSS_BACKEND"
# Kernel modules per loss: (torch tiles, Triton kernels), both implementing one contract.
_KERNEL_MODULES = {
    "info_nce": ("hardbatch.losses.tiled", "hardbatch.losses.triton_kernels"),
    "sigmoid_loss": ("hardbatch.losses.sigmoid_tiled", "hardbatch.losses.triton_sigmoid"),
}


def _triton_available(module: str) -> bool:
    return importlib.util.find_spec("triton") is not None and importlib.util.find_spec(module) is not None


def resolve_backend(
    backend: str | None,
    device: torch.device,
    sample: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    *,
    loss: str = "info_nce",
) -> tuple[str, ModuleType]:
    """Pick the kernel module of ``loss``: ``triton`` for CUDA tensors when Triton is importable, else ``torch``.

    ``backend=None`` reads ``$HARDBATCH_LOSS_BACKEND`` (default ``auto``). The Triton module is imported
    lazily, only when it is actually used; ``sample`` (an input tensor, or the query and key tensors) lets
    ``auto`` fall back to torch for what the kernels do not cover (float64, mixed dtypes). ``loss`` is
    ``"info_nce"`` (``tiled`` / ``triton_kernels``) or ``"sigmoid_loss"`` (``sigmoid_tiled`` /
    ``triton_sigmoid``).
    """
    name = backend if backend is not None else os.environ.get(BACKEND_ENV, "auto")
    if name not in BACKENDS:
        raise ConfigError(f"backend: expected one of {BACKENDS}, got {name!r}")
    torch_module, triton_module = _KERNEL_MODULES[loss]
    if name == "auto":
        if device.type != "cuda" or not _triton_available(triton_module):
            return "torch", importlib.import_module(torch_module)
        kernels = importlib.import_module(triton_module)
        samples = sample if isinstance(sample, tuple) else () if sample is None else (sample,)
        # e.g. float64 inputs: the kernels cover fp32/bf16/fp16 only, with one dtype for q and k.
        mixed = len({t.dtype for t in samples}) > 1
        if mixed or not all(kernels.triton_supported(t) for t in samples):
            return "torch", importlib.import_module(torch_module)
        return "triton", kernels
    if name == "torch":
        return name, importlib.import_module(torch_module)
    if importlib.util.find_spec("triton") is None:
        raise MissingExtraError("triton", "triton", f"backend='triton' of {loss}")
    return name, importlib.import_module(triton_module)


def _default_tile(name: str, device: torch.device) -> tuple[int | None, int | None]:
    if name == "triton":
        # The Triton kernels autotune their block sizes; tile sizes are only upper bounds there.
        return (None, None)
    return tiled.DEFAULT_TILE_CUDA if device.type == "cuda" else tiled.DEFAULT_TILE_CPU


@dataclass(frozen=True)
class _Plan:
    """Static (non-tensor) configuration of one loss call."""

    symmetric: bool
    reduction: str
    tile_b: int | None
    tile_n: int | None
    kernels: ModuleType
    group: Any
    world: int
    rank: int
    duplicate_labels: bool
    mode: str = "local"  # "local" | "gather" | "ring"
    key_rows: tuple[int, ...] = ()


class _FusedInfoNCE(torch.autograd.Function):
    """Autograd wrapper around the kernel contract (forward LSE pass, fused backward)."""

    @staticmethod
    def forward(
        ctx: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        scale: torch.Tensor,
        labels: torch.Tensor,
        query_ids: torch.Tensor | None,
        key_ids: torch.Tensor | None,
        plan: _Plan,
    ) -> torch.Tensor:
        scale32 = scale.detach().to(torch.float32).reshape(())
        query, key = query.detach(), key.detach()
        keys, key_ids_all, global_labels = key, key_ids, labels
        if plan.mode == "gather":
            keys, key_ids_all, global_labels = gather_keys(key, key_ids, labels, plan.group, plan.rank)
        if plan.mode == "ring":
            row_lse, col_lse, positive = _ring_forward(query, key, scale32, labels, query_ids, key_ids, plan)
        else:
            row_lse, col_lse, positive = plan.kernels.fused_lse_forward(
                query,
                keys,
                scale32,
                global_labels,
                query_ids,
                key_ids_all,
                plan.symmetric,
                plan.tile_b,
                plan.tile_n,
            )
        per_row = row_lse - positive
        if plan.symmetric:
            if plan.mode == "gather":
                # Each rank saw only its queries: merge the partial column LSEs into the global ones.
                col_lse = all_reduce_lse(col_lse, plan.group)
            per_row = 0.5 * (per_row + col_lse[global_labels] - positive)
        ctx.plan = plan
        ctx.keys = keys
        ctx.key_ids_all = key_ids_all
        ctx.scale_shape, ctx.scale_dtype = scale.shape, scale.dtype
        ctx.save_for_backward(query, scale32, global_labels, query_ids, row_lse, col_lse)
        return reduce_rows(per_row, plan.reduction).to(torch.promote_types(query.dtype, key.dtype))

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        plan: _Plan = ctx.plan
        query, scale32, global_labels, query_ids, row_lse, col_lse = ctx.saved_tensors
        keys = ctx.keys
        per_row = per_row_weights(grad_output, plan.reduction, query.shape[0])
        g_row, g_col, g_term = per_row, None, None
        if plan.symmetric:
            g_row = g_term = 0.5 * per_row
            g_col = torch.zeros(keys.shape[0], dtype=torch.float32, device=keys.device)
            g_col.index_add_(0, global_labels, g_term)
            if plan.mode == "gather":
                # Every rank's queries touch every positive column: share the column weights.
                torch.distributed.all_reduce(g_col, group=None if plan.group is True else plan.group)
        args = (
            query,
            keys,
            scale32,
            global_labels,
            query_ids,
            ctx.key_ids_all,
            row_lse,
            col_lse,
            g_row,
            g_col,
        )
        if plan.mode == "ring":
            d_query, d_keys, d_scale = _ring_backward(*args, plan)
        else:
            d_query, d_keys, d_scale = plan.kernels.fused_backward(*args, plan.tile_b, plan.tile_n)
        if plan.symmetric and plan.duplicate_labels:
            d_query, d_keys, d_scale = _correct_shared_positives(
                query, keys, scale32, global_labels, g_col, g_term, d_query, d_keys, d_scale
            )
        if plan.world > 1:
            d_key = reduce_scatter_rows(d_keys, plan.group) if plan.mode == "gather" else d_keys
            d_scale = mean_over_ranks(d_scale, plan.group, plan.world)
        else:
            d_key = d_keys
        need_q, need_k, need_s = ctx.needs_input_grad[:3]
        return (
            d_query.to(query.dtype) if need_q else None,
            d_key.to(keys.dtype) if need_k else None,
            d_scale.to(ctx.scale_dtype).reshape(ctx.scale_shape) if need_s else None,
            None,
            None,
            None,
            None,
        )


def _ring_forward(
    query: torch.Tensor,
    key: torch.Tensor,
    scale32: torch.Tensor,
    labels: torch.Tensor,
    query_ids: torch.Tensor | None,
    key_ids: torch.Tensor | None,
    plan: _Plan,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Row LSE, own keys' global column LSE and positive logits with key blocks travelling the ring.

    Each rank merges its block's row LSE online; the partial column LSE of a block travels with it
    (a carry, merged with logaddexp) and returns complete to the block's owner after W hops.
    """
    row_lse = torch.full((query.shape[0],), float("-inf"), dtype=torch.float32, device=query.device)
    no_positive = torch.full_like(labels, -1)  # foreign blocks hold no positive of this rank's queries
    positive: list[torch.Tensor] = []

    def block(step: int, blocks: list[torch.Tensor | None]) -> torch.Tensor | None:
        row, col, pos = plan.kernels.fused_lse_forward(
            query,
            blocks[0],
            scale32,
            labels if step == 0 else no_positive,
            query_ids,
            blocks[1],
            plan.symmetric,
            plan.tile_b,
            plan.tile_n,
        )
        torch.logaddexp(row_lse, row, out=row_lse)
        if step == 0:
            positive.append(pos)
        return col

    merge = logaddexp_into if plan.symmetric else None
    col_lse = circulate(Ring(plan.group), plan.key_rows, [key, key_ids], block, merge)
    return row_lse, col_lse, positive[0]


def _ring_backward(
    query: torch.Tensor,
    key: torch.Tensor,
    scale32: torch.Tensor,
    labels: torch.Tensor,
    query_ids: torch.Tensor | None,
    key_ids: torch.Tensor | None,
    row_lse: torch.Tensor,
    col_lse: torch.Tensor | None,
    g_row: torch.Tensor,
    g_col: torch.Tensor | None,
    plan: _Plan,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused backward over all ranks' key blocks; each block's key gradient travels back to its owner.

    A block travels with its ids, its global column LSE and its column gradient weights (all O(n)), so
    every rank can form both directions' gradient for its queries against it.
    """
    d_query = torch.zeros(query.shape, dtype=torch.float32, device=query.device)
    d_scale = torch.zeros((), dtype=torch.float32, device=query.device)
    no_positive = torch.full_like(labels, -1)

    def block(step: int, blocks: list[torch.Tensor | None]) -> torch.Tensor:
        nonlocal d_scale
        dq, dk, ds = plan.kernels.fused_backward(
            query,
            blocks[0],
            scale32,
            labels if step == 0 else no_positive,
            query_ids,
            blocks[1],
            row_lse,
            blocks[2],
            g_row,
            blocks[3],
            plan.tile_b,
            plan.tile_n,
        )
        d_query.add_(dq)
        d_scale = d_scale + ds
        return dk

    d_key = circulate(Ring(plan.group), plan.key_rows, [key, key_ids, col_lse, g_col], block, add_into)
    assert d_key is not None
    return d_query, d_key, d_scale


def _correct_shared_positives(
    query: torch.Tensor,
    keys: torch.Tensor,
    scale32: torch.Tensor,
    labels: torch.Tensor,
    g_col: torch.Tensor,
    g_term: torch.Tensor,
    d_query: torch.Tensor,
    d_keys: torch.Tensor,
    d_scale: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """O(b·d) fix-up when several queries share one positive key.

    The kernel contract subtracts the whole column weight ``g_col[j]`` at every positive entry (i, j);
    the exact gradient subtracts only query i's own column-term weight. The difference ``c_i`` is added
    back at the b positive entries.
    """
    correction = g_col[labels] - g_term
    positive_keys = keys[labels].to(torch.float32)
    q32 = query.to(torch.float32)
    d_query = d_query + (correction * scale32)[:, None] * positive_keys
    d_keys = d_keys.index_add(0, labels, (correction * scale32)[:, None] * q32)
    d_scale = d_scale + (correction * (q32 * positive_keys).sum(1)).sum()
    return d_query, d_keys, d_scale


def info_nce(
    query: torch.Tensor,
    key: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    scale: float | torch.Tensor = 20.0,
    symmetric: bool = True,
    query_ids: torch.Tensor | None = None,
    key_ids: torch.Tensor | None = None,
    tile_size: int | tuple[int, int] | None = None,
    group: Any = None,
    reduction: str = "mean",
    backend: str | None = None,
    distributed: str = "auto",
) -> torch.Tensor:
    """Exact InfoNCE (``symmetric=False``) or CLIP loss (``symmetric=True``) without a b × n matrix.

    With ``S = scale · query @ key.T`` (dot products; normalise the embeddings first for cosine
    similarity), query i's loss is ``row_i = logsumexp_j S[i, j] − S[i, labels[i]]``. With ``symmetric``
    the key → query direction over the positive keys is added: ``col_i = logsumexp_{i'} S[i', labels[i]] −
    S[i, labels[i]]`` and the per-query loss is ``(row_i + col_i) / 2`` (mean of both directions = CLIP).

    Args:
        query: (b, d) float tensor (fp32/bf16/fp16; accumulation and log-sum-exp are fp32).
        key: (n, d) float tensor, n >= b with the default labels; rows beyond the positives are extra (hard)
            negatives. Use :mod:`hardbatch.losses.layouts` for the stacked (sentence-transformers) and
            grouped (Tevatron/FlagEmbedding) layouts.
        labels: (b,) int64 index of each query's positive in ``key`` (rank-local under ``group``);
            default ``arange(b)``.
        scale: logit scale (1 / temperature); a float or a one-element tensor that may require grad
            (its gradient is exact).
        symmetric: add the key → query direction.
        query_ids: (b,) int64 and ``key_ids`` (n,) int64: key j is dropped from query i's negatives (and
            query i from key j's) when ``key_ids[j] == query_ids[i]`` and j is not i's positive, e.g. the
            id of the positive's source document or a hash of its text (:func:`layouts.text_ids`).
        key_ids: see ``query_ids``.
        tile_size: ``int`` or ``(tile_b, tile_n)``; default 1024 × 1024 on CPU, 4096² for torch on CUDA, the
            Triton kernel's own default on the Triton backend. Scratch memory is 3 · tile_b · tile_n · 4 bytes.
        group: a ``torch.distributed`` process group (or ``True`` for the default group). Each rank passes
            its local rows; all ranks' keys are the negatives.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-query (b,) losses).
        backend: ``"auto"`` (Triton for CUDA tensors when installed), ``"torch"`` or ``"triton"``;
            None reads ``$HARDBATCH_LOSS_BACKEND``.
        distributed: under ``group``: ``"gather"`` (all-gather the keys, reduce-scatter their gradients:
            O(W·n·d) per rank, equal shards), ``"ring"`` (key blocks travel rank to rank with P2P sends
            overlapped with the tiles: O((b + n)·d) per rank whatever W, unequal shards allowed) or ``"auto"`` (gather while shards are equal and
            W·n·d·(itemsize + 4) bytes ≤ ``hardbatch.losses.ring.GATHER_MAX_BYTES`` = 1 GiB, else ring).

    Returns:
        Scalar loss (or (b,) losses) in the promoted input dtype; gradients come back in each input's dtype.

    Gradient convention under ``group`` (W ranks, DDP): rank r returns the loss over ITS rows, L_r (mean
    over its b rows by default), and its backward gives its embeddings the gradient of Σ_r L_r. DDP
    averages parameter gradients, so parameters receive exactly the gradient of (1/W)·Σ_r L_r, which for
    ``reduction="mean"`` is the single-process loss on the concatenated batch: no ×W rescaling (OpenCLIP's
    local-loss + gather-with-grad convention). A tensor ``scale`` is shared by all ranks, so its gradient
    is averaged over ranks inside the backward: every rank holds the gradient of (1/W)·Σ_r L_r directly,
    with or without DDP.

    Example:
        >>> from hardbatch.losses import reference_info_nce
        >>> q = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
        >>> k = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
        >>> loss = info_nce(q, k, scale=20.0)
        >>> torch.allclose(loss, reference_info_nce(q, k, scale=20.0), atol=1e-5)
        True
    """
    checked = check_loss_inputs(query, key, labels, scale, query_ids, key_ids, reduction)
    name, kernels = resolve_backend(backend, query.device, (query, key))
    tile_b, tile_n = parse_tile_size(tile_size, _default_tile(name, query.device))
    dplan = plan_call(group, distributed, query, key, query_ids is not None)
    plan = _Plan(
        symmetric=bool(symmetric),
        reduction=reduction,
        tile_b=tile_b,
        tile_n=tile_n,
        kernels=kernels,
        group=group,
        world=dplan.world,
        rank=dplan.rank,
        duplicate_labels=checked.duplicate_labels,
        mode=dplan.mode,
        key_rows=dplan.key_rows,
    )
    return _FusedInfoNCE.apply(
        query, key, checked.scale, checked.labels, checked.query_ids, checked.key_ids, plan
    )
