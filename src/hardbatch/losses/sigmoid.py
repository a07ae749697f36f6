"""Exact sigmoid (SigLIP) loss with O((b + n)·d) memory: tiled, learnable scale and bias, distributed.

``L = −(1/b) Σ_i Σ_j log σ(z_ij · (scale · q_i·k_j + bias))`` with ``z_ij = +1`` for query i's positive and
−1 for every other key, masked (false-negative) pairs left out. Unlike InfoNCE there is no normalisation
over a row or column, so every logit contributes independently: tiles are summed, there is no LSE to
merge, and the distributed ring needs no carried statistics in the forward (SigLIP's own "shift the
keys around the devices" schedule).

Complexity (b queries, n keys per rank, d dims, W ranks):
    time   8·b·n·d FLOPs per rank and key block (forward 2, backward 6: recompute + two gradient matmuls),
           ≈3·b·n transcendental ops; against all W·n keys in distributed mode.
    memory O((b + n)·d) inputs + fp32 gradient accumulators, O(b) per-query losses, two fp32
           tile_b × tile_n scratch tiles (torch tiles; the Triton kernels keep tiles in registers and add
           an O(S·b) buffer of per-split sums). ``gather`` adds W·n·d (keys) + W·n·d·4 B (key gradients)
           per rank; ``ring`` adds two key blocks and two fp32 key-gradient blocks, independent of W.

Backends: the per-block tile functions ``sigmoid_forward`` / ``sigmoid_backward`` come from
``sigmoid_tiled`` (torch ops, CPU and fallback) or ``triton_sigmoid`` (fused Triton kernels, CUDA), chosen
by ``backend=`` as for :func:`info_nce`; the local, gather and ring modes all call them per key block.

References:
    Zhai et al., "Sigmoid Loss for Language Image Pre-Training" (SigLIP), arXiv 2303.15343.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from hardbatch.losses.distributed import gather_keys, mean_over_ranks, reduce_scatter_rows
from hardbatch.losses.info_nce import _default_tile, resolve_backend
from hardbatch.losses.inputs import (
    as_scalar,
    check_loss_inputs,
    parse_tile_size,
    per_row_weights,
    reduce_rows,
)
from hardbatch.losses.ring import Ring, add_into, circulate, plan_call

__all__ = ["sigmoid_loss"]


@dataclass(frozen=True)
class _SigmoidPlan:
    reduction: str
    tile_b: int | None
    tile_n: int | None
    kernels: ModuleType  # sigmoid_tiled (torch tiles) or triton_sigmoid: one contract
    group: Any
    mode: str  # "local" | "gather" | "ring"
    world: int
    rank: int
    key_rows: tuple[int, ...]


class _SigmoidLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor,
        labels: torch.Tensor,
        query_ids: torch.Tensor | None,
        key_ids: torch.Tensor | None,
        plan: _SigmoidPlan,
    ) -> torch.Tensor:
        scale32 = scale.detach().to(torch.float32).reshape(())
        bias32 = bias.detach().to(torch.float32).reshape(())
        query, key = query.detach(), key.detach()
        tiles = (plan.tile_b, plan.tile_n)
        keys, key_ids_all, global_labels = key, key_ids, labels
        if plan.mode == "gather":
            keys, key_ids_all, global_labels = gather_keys(key, key_ids, labels, plan.group, plan.rank)
        if plan.mode == "ring":
            per_row = torch.zeros(query.shape[0], dtype=torch.float32, device=query.device)
            no_positive = torch.full_like(labels, -1)

            def block_loss(step: int, blocks: list[torch.Tensor | None]) -> None:
                lab = labels if step == 0 else no_positive
                per_row.add_(
                    plan.kernels.sigmoid_forward(
                        query, blocks[0], scale32, bias32, lab, query_ids, blocks[1], *tiles
                    )
                )

            circulate(Ring(plan.group), plan.key_rows, [key, key_ids], block_loss)
        else:
            per_row = plan.kernels.sigmoid_forward(
                query, keys, scale32, bias32, global_labels, query_ids, key_ids_all, *tiles
            )
        ctx.plan = plan
        ctx.keys = keys
        ctx.key_ids_all = key_ids_all
        ctx.shapes = (scale.shape, scale.dtype, bias.shape, bias.dtype)
        ctx.save_for_backward(query, scale32, bias32, global_labels, query_ids)
        return reduce_rows(per_row, plan.reduction).to(torch.promote_types(query.dtype, key.dtype))

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        plan: _SigmoidPlan = ctx.plan
        query, scale32, bias32, labels, query_ids = ctx.saved_tensors
        keys, key_ids = ctx.keys, ctx.key_ids_all
        g_row = per_row_weights(grad_output, plan.reduction, query.shape[0])
        tiles = (plan.tile_b, plan.tile_n)
        if plan.mode == "ring":
            d_query = torch.zeros(query.shape, dtype=torch.float32, device=query.device)
            totals = torch.zeros(2, dtype=torch.float32, device=query.device)  # dscale, dbias
            no_positive = torch.full_like(labels, -1)

            def block_grad(step: int, blocks: list[torch.Tensor | None]) -> torch.Tensor:
                lab = labels if step == 0 else no_positive
                dq, dk, ds, db = plan.kernels.sigmoid_backward(
                    query, blocks[0], scale32, bias32, lab, query_ids, blocks[1], g_row, *tiles
                )
                d_query.add_(dq)
                totals[0] += ds
                totals[1] += db
                return dk

            d_key = circulate(Ring(plan.group), plan.key_rows, [keys, key_ids], block_grad, add_into)
            d_scale, d_bias = totals[0], totals[1]
        else:
            d_query, d_keys, d_scale, d_bias = plan.kernels.sigmoid_backward(
                query, keys, scale32, bias32, labels, query_ids, key_ids, g_row, *tiles
            )
            d_key = reduce_scatter_rows(d_keys, plan.group) if plan.mode == "gather" else d_keys
        if plan.mode != "local":
            # scale and bias are shared by all ranks: every rank holds the gradient of (1/W)·Σ_r L_r.
            d_scale = mean_over_ranks(d_scale, plan.group, plan.world)
            d_bias = mean_over_ranks(d_bias, plan.group, plan.world)
        scale_shape, scale_dtype, bias_shape, bias_dtype = ctx.shapes
        need_q, need_k, need_s, need_b = ctx.needs_input_grad[:4]
        return (
            d_query.to(query.dtype) if need_q else None,
            d_key.to(keys.dtype) if need_k else None,
            d_scale.to(scale_dtype).reshape(scale_shape) if need_s else None,
            d_bias.to(bias_dtype).reshape(bias_shape) if need_b else None,
            None,
            None,
            None,
            None,
        )


def sigmoid_loss(
    query: torch.Tensor,
    key: torch.Tensor,
    scale: float | torch.Tensor,
    bias: float | torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    query_ids: torch.Tensor | None = None,
    key_ids: torch.Tensor | None = None,
    tile_size: int | tuple[int, int] | None = None,
    group: Any = None,
    distributed: str = "auto",
    reduction: str = "mean",
    backend: str | None = None,
) -> torch.Tensor:
    """Exact sigmoid (SigLIP) loss without a b × n matrix.

    ``x_ij = scale · query_i·key_j + bias``; query i's loss is ``Σ_j −log σ(z_ij·x_ij)`` over the keys that
    are not masked, with ``z_ij = +1`` for ``j == labels[i]`` and −1 otherwise. ``reduction="mean"`` gives
    ``−(1/b) Σ_i Σ_j log σ(z_ij·x_ij)`` (SigLIP's normalisation by the batch size, not by b·n).

    Args:
        query: (b, d) float tensor (fp32/bf16/fp16; torch tiles run bf16 inputs' matmuls in bf16 where
            :func:`hardbatch.device.fast_bf16_matmul` says so, with every positive logit in fp32, and
            otherwise in fp32; Triton tiles read the inputs in their dtype with fp32 accumulation;
            softplus, σ and all sums are fp32).
        key: (n, d) float tensor; with the default labels n >= b and keys beyond b are extra (hard)
            negatives of every query.
        scale: logit scale, a float or a one-element tensor that may require grad (exact gradient).
            SigLIP learns ``log scale`` from log 10 (see :class:`hardbatch.losses.SigmoidLoss`).
        bias: logit bias, a float or a one-element tensor that may require grad; SigLIP starts at −10.
        labels: (b,) int64 index of each query's positive in ``key`` (rank-local under ``group``);
            default ``arange(b)``. Several queries may share a positive.
        query_ids: (b,) int64 and ``key_ids`` (n,) int64: pair (i, j) is left out when
            ``key_ids[j] == query_ids[i]`` and j is not i's positive (as in :func:`info_nce`).
        key_ids: see ``query_ids``.
        tile_size: ``int`` or ``(tile_b, tile_n)``; default 1024² on CPU, 4096² for torch tiles on CUDA
            (scratch 2 · tile_b · tile_n · 4 bytes), autotuned blocks on the Triton backend (then an upper
            bound; no b × n scratch at all).
        group: a ``torch.distributed`` process group (or ``True``): every rank's keys are negatives of
            every query. Gradient convention as :func:`info_nce` (local loss; DDP averaging gives the
            global-batch gradient; scale and bias gradients averaged over ranks).
        distributed: ``"gather"`` (all-gather keys, reduce-scatter key gradients: W·n·d per rank, equal
            shards), ``"ring"`` (P2P ring: O(n·d) per rank, unequal shards allowed) or ``"auto"``
            (gather while W·n·d·(itemsize + 4) bytes ≤ ``hardbatch.losses.ring.GATHER_MAX_BYTES`` and
            shards are equal, else ring).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` ((b,) per-query losses).
        backend: ``"auto"`` (the Triton kernels of :mod:`hardbatch.losses.triton_sigmoid` for CUDA
            tensors of one fp32/bf16/fp16 dtype when Triton is installed, else the torch tiles of
            :mod:`hardbatch.losses.sigmoid_tiled`), ``"torch"`` or ``"triton"`` (CPU tensors only under
            ``TRITON_INTERPRET=1``); None reads ``$HARDBATCH_LOSS_BACKEND``. Every ``distributed`` mode
            runs its local tiles on the chosen backend.

    Returns:
        Scalar loss (or (b,) losses) in the promoted input dtype; gradients in each input's dtype.

    Raises:
        ConfigError: bad shapes, labels, ids, scale/bias, tile size, reduction or distributed mode.

    Example:
        >>> q = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
        >>> k = torch.nn.functional.normalize(torch.randn(9, 8), dim=-1)
        >>> x = 10.0 * q @ k.T - 10.0
        >>> z = -torch.ones(6, 9)
        >>> z[range(6), range(6)] = 1.0
        >>> want = -torch.nn.functional.logsigmoid(z * x).sum() / 6
        >>> torch.allclose(sigmoid_loss(q, k, 10.0, -10.0), want, atol=1e-5)
        True
    """
    checked = check_loss_inputs(query, key, labels, scale, query_ids, key_ids, reduction)
    bias_t = as_scalar(bias, "bias", query.device)
    name, kernels = resolve_backend(backend, query.device, (query, key), loss="sigmoid_loss")
    tile_b, tile_n = parse_tile_size(tile_size, _default_tile(name, query.device))
    dplan = plan_call(group, distributed, query, key, checked.query_ids is not None)
    plan = _SigmoidPlan(
        reduction, tile_b, tile_n, kernels, group, dplan.mode, dplan.world, dplan.rank, dplan.key_rows
    )
    return _SigmoidLoss.apply(
        query, key, checked.scale, bias_t, checked.labels, checked.query_ids, checked.key_ids, plan
    )
