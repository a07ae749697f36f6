"""Batch hardness under a teacher: how much harder a sampler's batches are than random ones.

For a batch B with query embeddings Q_B and positive embeddings P_B (teacher, L2-normalised) the b × b
block S = Q_B · P_Bᵀ holds the positives on its diagonal and the in-batch negatives off it. Per batch we
measure

* the similarity of the in-batch negatives (per row: mean and hardest; summarised by mean and
  percentiles over rows),
* the in-batch InfoNCE loss ``CE(scale · S, diagonal)`` (higher = harder batch; depends on b, so always
  compare at equal batch sizes),
* in-batch recall@1: the fraction of queries whose own positive beats every in-batch negative
  (lower = harder),

and, to see *which* pairs a strategy groups, the fraction of teacher nearest-neighbour pairs (query i →
positive j among its top-k, j ≠ i) whose two examples share a batch, compared with the (b - 1) / (N - 1)
a random assignment achieves.

Only b × b blocks are ever formed (never N × N): batches of equal size are stacked and processed in groups
with one batched matmul. Time O(N · b · d), memory O(group · b · (b + d)). The neighbour pairs need one
chunked O(N² · d) pass (:func:`teacher_neighbor_pairs`), memory O(chunk_size · N + N · k).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hardbatch.errors import ConfigError
from hardbatch.graph.similarity import iter_similarity_blocks
from hardbatch.validation import check_embeddings

__all__ = [
    "BatchHardness",
    "batch_hardness",
    "group_stats",
    "pair_coverage",
    "random_batches_like",
    "summarize_hardness",
    "teacher_neighbor_pairs",
]

#: Percentiles reported for per-row metrics.
PERCENTILES = (10, 50, 90, 99)


@dataclass
class BatchHardness:
    """Per-row and per-batch hardness of a set of batches.

    Attributes:
        row_neg_mean: (M,) mean similarity of each batched query to the in-batch negatives.
        row_neg_max: (M,) similarity of each batched query to its hardest in-batch negative.
        row_correct: (M,) bool, the query's own positive ranks first in its batch (in-batch recall@1).
        batch_loss: (num_batches,) in-batch InfoNCE loss of every batch (batches of size 1 excluded).
        batch_neg_mean: (num_batches,) mean negative similarity of every batch.
        batch_sizes: (num_batches,) sizes.
    """

    row_neg_mean: np.ndarray
    row_neg_max: np.ndarray
    row_correct: np.ndarray
    batch_loss: np.ndarray
    batch_neg_mean: np.ndarray
    batch_sizes: np.ndarray


def _normalized(array: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array)
    return torch.nn.functional.normalize(tensor.to(device=device, dtype=torch.float32), dim=1)


def batch_hardness(
    query_emb: np.ndarray | torch.Tensor,
    positive_emb: np.ndarray | torch.Tensor,
    batches: Sequence[Sequence[int]],
    *,
    scale: float = 20.0,
    group_bytes: int = 64 << 20,
    device: str | torch.device = "cpu",
) -> BatchHardness:
    """Hardness of every batch under teacher embeddings (only b × b blocks are formed).

    Args:
        query_emb: (N, d) float teacher query embeddings (normalised here).
        positive_emb: (N, d) float teacher positive embeddings.
        batches: lists of example ids; batches of size 1 have no negatives and are skipped.
        scale: inverse temperature of the in-batch InfoNCE (20 = temperature 0.05, sentence-transformers'
            default).
        group_bytes: memory budget of one stacked group of batches.
        device: torch device.

    Returns:
        :class:`BatchHardness`.

    Example:
        >>> x = np.eye(4, dtype=np.float32)
        >>> h = batch_hardness(x, x, [[0, 1], [2, 3]])
        >>> h.row_neg_mean.tolist(), bool(h.row_correct.all())
        ([0.0, 0.0, 0.0, 0.0], True)
    """
    n = len(query_emb)
    check_embeddings(query_emb, "query embeddings")
    check_embeddings(positive_emb, "positive embeddings", rows=n, dim=query_emb.shape[1])
    dev = torch.device(device)
    by_size: dict[int, list[Sequence[int]]] = {}
    for batch in batches:
        if len(batch) > 1:
            by_size.setdefault(len(batch), []).append(batch)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("mean", "max", "correct", "loss", "bmean", "size")}
    dim = query_emb.shape[1]
    for size, same in by_size.items():
        index = np.asarray(same, dtype=np.int64)
        if index.min() < 0 or index.max() >= n:
            raise ConfigError(f"a batch holds an example id outside [0, {n})")
        per_group = max(1, group_bytes // (4 * size * (size + 2 * dim)))
        for start in range(0, len(index), per_group):
            ids = index[start : start + per_group]
            flat = ids.reshape(-1)
            q = _normalized(query_emb[flat], dev).view(len(ids), size, dim)
            p = _normalized(positive_emb[flat], dev).view(len(ids), size, dim)
            sims = torch.bmm(q, p.transpose(1, 2))  # (g, b, b): one block per batch
            eye = torch.eye(size, dtype=torch.bool, device=dev)
            negatives = sims.masked_fill(eye, float("-inf"))
            positives = sims.diagonal(dim1=1, dim2=2)
            neg_sum = sims.masked_fill(eye, 0.0).sum(dim=2)
            row_mean = neg_sum / (size - 1)
            row_max = negatives.max(dim=2).values
            loss = torch.nn.functional.cross_entropy(
                (scale * sims).reshape(-1, size),
                torch.arange(size, device=dev).repeat(len(ids)),
                reduction="none",
            ).view(len(ids), size)
            parts["mean"].append(row_mean.reshape(-1).cpu().numpy())
            parts["max"].append(row_max.reshape(-1).cpu().numpy())
            parts["correct"].append((positives > row_max).reshape(-1).cpu().numpy())
            parts["loss"].append(loss.mean(dim=1).cpu().numpy())
            parts["bmean"].append(row_mean.mean(dim=1).cpu().numpy())
            parts["size"].append(np.full(len(ids), size, dtype=np.int64))

    def cat(key: str, dtype: Any = np.float32) -> np.ndarray:
        return np.concatenate(parts[key]) if parts[key] else np.empty(0, dtype=dtype)

    return BatchHardness(
        row_neg_mean=cat("mean"),
        row_neg_max=cat("max"),
        row_correct=cat("correct", bool),
        batch_loss=cat("loss"),
        batch_neg_mean=cat("bmean"),
        batch_sizes=cat("size", np.int64),
    )


def summarize_hardness(hardness: BatchHardness) -> dict[str, float]:
    """Scalar summary: means and percentiles of the per-row metrics, mean batch loss, recall@1."""
    out: dict[str, float] = {
        "batches": int(hardness.batch_sizes.size),
        "rows": int(hardness.row_neg_mean.size),
    }
    if hardness.row_neg_mean.size == 0:
        return out
    out["neg_sim_mean"] = float(hardness.row_neg_mean.mean())
    for pct in PERCENTILES:
        out[f"neg_sim_p{pct}"] = float(np.percentile(hardness.row_neg_mean, pct))
    out["hardest_neg_sim_mean"] = float(hardness.row_neg_max.mean())
    for pct in PERCENTILES:
        out[f"hardest_neg_sim_p{pct}"] = float(np.percentile(hardness.row_neg_max, pct))
    out["infonce"] = float(hardness.batch_loss.mean())
    out["recall@1"] = float(hardness.row_correct.mean())
    return out


def random_batches_like(
    batches: Sequence[Sequence[int]], num_examples: int, *, seed: int = 0
) -> list[np.ndarray]:
    """Random batches with the same sizes (drawn from all ``num_examples``, without replacement).

    Example:
        >>> [len(b) for b in random_batches_like([[0, 1, 2], [3]], 10)]
        [3, 1]
    """
    sizes = [len(b) for b in batches]
    if sum(sizes) > num_examples:
        raise ConfigError(f"the batches hold {sum(sizes)} examples but there are only {num_examples}")
    order = np.random.default_rng([int(seed), 0x4A4D]).permutation(num_examples)
    bounds = np.cumsum([0, *sizes])
    return [order[bounds[i] : bounds[i + 1]] for i in range(len(sizes))]


def teacher_neighbor_pairs(
    query_emb: np.ndarray | torch.Tensor,
    positive_emb: np.ndarray | torch.Tensor,
    k: int = 10,
    *,
    chunk_size: int = 1024,
    device: str | torch.device | None = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's top-k hard pairs: for every query i, the k positives j ≠ i most similar to it.

    Args:
        query_emb: (N, d) float array.
        positive_emb: (N, d) float array.
        k: neighbours per query (1 <= k < N).
        chunk_size: queries per similarity block.
        device: torch device.

    Returns:
        ``(rows, cols)``: (N · k,) int64 arrays of the pairs (i, j).

    Time O(N² · d), memory O(chunk_size · N + N · k).
    """
    n = len(query_emb)
    if not 1 <= k < n:
        raise ConfigError(f"k must lie in [1, {n - 1}], got {k}")
    cols = np.empty((n, k), dtype=np.int64)
    for start, block in iter_similarity_blocks(
        query_emb, positive_emb, chunk_size=chunk_size, device=device, normalize=True
    ):
        rows = torch.arange(start, start + len(block), device=block.device)
        block[torch.arange(len(block), device=block.device), rows] = float("-inf")  # not its own positive
        cols[start : start + len(block)] = torch.topk(block, k, dim=1).indices.cpu().numpy()
    return np.repeat(np.arange(n, dtype=np.int64), k), cols.reshape(-1)


def _batch_of(batches: Sequence[Sequence[int]], num_examples: int) -> np.ndarray:
    batch_of = np.full(num_examples, -1, dtype=np.int64)
    for index, batch in enumerate(batches):
        batch_of[np.asarray(batch, dtype=np.int64)] = index
    return batch_of


def pair_coverage(
    rows: np.ndarray, cols: np.ndarray, batches: Sequence[Sequence[int]], num_examples: int
) -> float:
    """Fraction of the pairs (rows[t], cols[t]), rows ≠ cols, whose examples share a batch (NaN: no pairs).

    Example:
        >>> pair_coverage(np.array([0, 0]), np.array([1, 2]), [[0, 1], [2, 3]], 4)
        0.5
    """
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    keep = rows != cols
    if not keep.any():
        return float("nan")
    batch_of = _batch_of(batches, num_examples)
    a, b = batch_of[rows[keep]], batch_of[cols[keep]]
    return float(((a == b) & (a >= 0)).mean())


def group_stats(labels: np.ndarray, batches: Sequence[Sequence[int]]) -> dict[str, Any]:
    """How a grouping (topic clusters, sources, B3 clusters) relates to the batches.

    Args:
        labels: (N,) group label of every example; negative = no group.
        batches: the batches.

    Returns:
        ``{"num_groups", "group_sizes" (sorted sizes), "groups_per_batch" (distinct labelled groups in
        every batch), "groups_per_batch_mean"}``.
    """
    labels = np.asarray(labels)
    valid = labels[labels >= 0]
    _, sizes = np.unique(valid, return_counts=True)
    per_batch = [
        int(np.unique(lab[lab >= 0]).size) for lab in (labels[np.asarray(b, dtype=np.int64)] for b in batches)
    ]
    return {
        "num_groups": int(sizes.size),
        "group_sizes": np.sort(sizes).tolist(),
        "groups_per_batch": per_batch,
        "groups_per_batch_mean": float(np.mean(per_batch)) if per_batch else 0.0,
    }
