"""False-negative diagnostics of a batching: in-batch negatives that are probably positives.

Hard batches buy hardness at the risk of *false negatives*: another example's positive that answers the
query as well as (or better than) its own. Two proxies, per sampler:

* **above positive**: the share of (query i, negative j) pairs of a batch with sim(q_i, p_j) > sim(q_i, p_i)
  under the teacher: the teacher prefers the "negative" to the labelled positive;
* **duplicate text**: the share of pairs whose positive texts are identical (exact duplicates; the loss
  masks them with ``mask_duplicates``, but they still waste a slot).

Extra negative columns (B3++ unified negatives, ``random-hn`` per-query negatives) are measured the same way
against every query of their batch, because the loss contrasts every query with every extra column.

Cost: O(N · b · d) time for the in-batch pairs (b × b blocks only, never N × N) plus O(N · e · d) for e
extra columns per batch; memory O(b · (b + e + d)) per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["false_negative_stats"]


def _unit(array: Any, ids: np.ndarray) -> torch.Tensor:
    block = torch.as_tensor(np.asarray(array[ids], dtype=np.float32))
    return torch.nn.functional.normalize(block, dim=1)


def false_negative_stats(
    query_emb: np.ndarray | torch.Tensor,
    positive_emb: np.ndarray | torch.Tensor,
    batches: Sequence[Sequence[int]],
    *,
    texts: Sequence[str] | None = None,
    extra: Sequence[Sequence[int]] | None = None,
) -> dict[str, float]:
    """Shares of likely false negatives among the in-batch (and extra) negatives of ``batches``.

    Args:
        query_emb: (N, d) float teacher query embeddings.
        positive_emb: (N, d) float teacher positive embeddings.
        batches: lists of example ids.
        texts: (N,) positive texts, for the duplicate share (omitted without).
        extra: per batch, the example ids whose positives are extra negative columns (B3++), or ``None``.

    Returns:
        ``pairs`` (ordered in-batch negative pairs), ``above_positive`` and, with ``texts``,
        ``duplicate_text`` (shares of those pairs); with ``extra``: ``extra_pairs``,
        ``extra_above_positive`` and ``extra_duplicate_text``.

    Example:
        >>> q = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]], dtype=np.float32)
        >>> p = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
        >>> stats = false_negative_stats(q, p, [[0, 1, 2]], texts=["a", "b", "a"])
        >>> stats["pairs"], round(stats["above_positive"], 3), round(stats["duplicate_text"], 3)
        (6, 0.167, 0.333)
    """
    query = query_emb.detach().cpu().numpy() if isinstance(query_emb, torch.Tensor) else query_emb
    positive = positive_emb.detach().cpu().numpy() if isinstance(positive_emb, torch.Tensor) else positive_emb
    text_ids = None
    if texts is not None:
        lookup: dict[str, int] = {}
        text_ids = np.fromiter((lookup.setdefault(t, len(lookup)) for t in texts), dtype=np.int64)
    pairs = above = dup = 0
    extra_pairs = extra_above = extra_dup = 0
    for index, batch in enumerate(batches):
        ids = np.asarray(batch, dtype=np.int64)
        if ids.size == 0:
            continue
        q = _unit(query, ids)
        own = (q * _unit(positive, ids)).sum(dim=1, keepdim=True)
        if ids.size > 1:
            sims = q @ _unit(positive, ids).T
            off = ~torch.eye(ids.size, dtype=torch.bool)
            pairs += ids.size * (ids.size - 1)
            above += int(((sims > own) & off).sum())
            if text_ids is not None:
                same = text_ids[ids][:, None] == text_ids[ids][None, :]
                dup += int((same & off.numpy()).sum())
        columns = np.asarray(extra[index], dtype=np.int64) if extra is not None else np.zeros(0, np.int64)
        if columns.size:
            sims = q @ _unit(positive, columns).T
            extra_pairs += ids.size * columns.size
            extra_above += int((sims > own).sum())
            if text_ids is not None:
                extra_dup += int((text_ids[ids][:, None] == text_ids[columns][None, :]).sum())
    out: dict[str, float] = {"pairs": pairs, "above_positive": above / pairs if pairs else 0.0}
    if text_ids is not None:
        out["duplicate_text"] = dup / pairs if pairs else 0.0
    if extra is not None:
        out["extra_pairs"] = extra_pairs
        out["extra_above_positive"] = extra_above / extra_pairs if extra_pairs else 0.0
        if text_ids is not None:
            out["extra_duplicate_text"] = extra_dup / extra_pairs if extra_pairs else 0.0
    return out
