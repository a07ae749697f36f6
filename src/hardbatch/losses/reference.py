"""Materialising InfoNCE: the ground truth the tiled implementation is tested against.

Builds the full fp32 logit matrix, so memory is O(b·n) (O(W·b × W·n) under ``group``) and autograd keeps
several copies of it. Use it for tests and small batches only; :func:`hardbatch.losses.info_nce` computes
the same value and gradients with O((b + n)·d) memory.
"""

from __future__ import annotations

from typing import Any

import torch

from hardbatch.losses.distributed import (
    GatherWithGrad,
    MeanGradAcrossRanks,
    all_gather_rows,
    check_equal_shards,
    group_rank,
    group_world_size,
)
from hardbatch.losses.inputs import check_loss_inputs, reduce_rows

__all__ = ["reference_info_nce", "reference_sigmoid_loss"]


def reference_info_nce(
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
) -> torch.Tensor:
    """InfoNCE / CLIP loss computed from the full logit matrix (same signature as ``info_nce``).

    Args: see :func:`hardbatch.losses.info_nce`; ``tile_size`` is accepted and ignored.

    Returns:
        Scalar (``mean``/``sum``) or (b,) per-query losses (``none``) in the promoted input dtype.

    Example:
        >>> q, k = torch.randn(4, 8), torch.randn(6, 8)
        >>> float(reference_info_nce(q, k, scale=1.0)) > 0
        True
    """
    del tile_size
    checked = check_loss_inputs(query, key, labels, scale, query_ids, key_ids, reduction)
    labels, query_ids, key_ids, scale_t = checked.labels, checked.query_ids, checked.key_ids, checked.scale
    out_dtype = torch.promote_types(query.dtype, key.dtype)
    b, n = query.shape[0], key.shape[0]
    all_query, all_key, row_offset = query, key, 0
    all_query_ids, all_key_ids, global_labels = query_ids, key_ids, labels
    if group is not None and group_world_size(group) > 1:
        world, rank = group_world_size(group), group_rank(group)
        check_equal_shards(group, {"queries": b, "keys": n, "dim": query.shape[1]}, query.device)
        all_query, all_key = GatherWithGrad.apply(query, group), GatherWithGrad.apply(key, group)
        scale_t = MeanGradAcrossRanks.apply(scale_t, group) if scale_t.requires_grad else scale_t
        gathered_labels = all_gather_rows(labels, group)
        global_labels = gathered_labels + torch.arange(world, device=query.device).repeat_interleave(b) * n
        if query_ids is not None:
            all_query_ids = all_gather_rows(query_ids, group)
            all_key_ids = all_gather_rows(key_ids, group)
        row_offset = rank * b
    logits = scale_t.to(torch.float32) * (all_query.to(torch.float32) @ all_key.to(torch.float32).T)
    rows = torch.arange(all_query.shape[0], device=query.device)
    if all_query_ids is not None:
        false_negative = all_query_ids[:, None] == all_key_ids[None, :]
        false_negative[rows, global_labels] = False
        logits = logits.masked_fill(false_negative, float("-inf"))
    local = slice(row_offset, row_offset + b)
    positive = logits[rows[local], global_labels[local]]
    per_row = torch.logsumexp(logits[local], dim=1) - positive
    if symmetric:
        column_lse = torch.logsumexp(logits[:, global_labels[local]], dim=0)
        per_row = 0.5 * (per_row + column_lse - positive)
    return reduce_rows(per_row, reduction).to(out_dtype)


def reference_sigmoid_loss(
    query: torch.Tensor,
    key: torch.Tensor,
    scale: float | torch.Tensor,
    bias: float | torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    query_ids: torch.Tensor | None = None,
    key_ids: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Sigmoid (SigLIP) loss from the full logit matrix; ground truth for :func:`sigmoid_loss` (one process).

    Computes in the dtype of ``query`` / ``key`` promoted with fp32 (pass float64 tensors for a float64
    reference). Memory O(b·n).

    Args: see :func:`hardbatch.losses.sigmoid_loss`.

    Returns:
        Scalar (``mean``/``sum``) or (b,) per-query losses.

    Example:
        >>> q, k = torch.randn(4, 8), torch.randn(6, 8)
        >>> float(reference_sigmoid_loss(q, k, 1.0, 0.0)) > 0
        True
    """
    checked = check_loss_inputs(query, key, labels, scale, query_ids, key_ids, reduction)
    dtype = torch.promote_types(torch.promote_types(query.dtype, key.dtype), torch.float32)
    scale_t = checked.scale
    bias_t = bias if isinstance(bias, torch.Tensor) else torch.tensor(float(bias), device=query.device)
    logits = scale_t.to(dtype) * (query.to(dtype) @ key.to(dtype).T) + bias_t.to(dtype)
    rows = torch.arange(query.shape[0], device=query.device)
    sign = -torch.ones_like(logits)
    sign[rows, checked.labels] = 1.0
    pair_loss = -torch.nn.functional.logsigmoid(sign * logits)
    if checked.query_ids is not None:
        masked = checked.query_ids[:, None] == checked.key_ids[None, :]
        masked[rows, checked.labels] = False
        pair_loss = pair_loss.masked_fill(masked, 0.0)
    return reduce_rows(pair_loss.sum(1), reduction)
