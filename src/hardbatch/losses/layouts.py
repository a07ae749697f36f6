"""Key layouts with hard negatives, and ids for the false-negative mask.

Two layouts are in use for ``key`` when every query brings m hard negatives:

* **stacked** (sentence-transformers): columns are concatenated, ``[P_1..P_b, N1_1..N1_b, ..., Nm_1..Nm_b]``;
  query i's positive is key i, so ``labels = arange(b)``.
* **grouped** (Tevatron, FlagEmbedding): one group per query, ``[P_1, N1_1..Nm_1, P_2, ...]``; query i's
  positive is key ``i·(m+1)``.

The loss value does not depend on the layout (a softmax is order-invariant); only the labels differ.
All helpers are O(b·m·d) copies at most.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hardbatch.errors import ConfigError
from hardbatch.ids import stable_ids

__all__ = ["grouped_keys", "grouped_labels", "stacked_keys", "stacked_labels", "text_ids"]


def stacked_labels(batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Labels of the stacked layout: ``arange(batch_size)`` (int64).

    Example:
        >>> stacked_labels(3).tolist()
        [0, 1, 2]
    """
    return torch.arange(batch_size, device=device)


def grouped_labels(
    batch_size: int, group_size: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Labels of the grouped layout: ``arange(batch_size) * group_size`` (group = positive + negatives).

    Example:
        >>> grouped_labels(3, group_size=4).tolist()
        [0, 4, 8]
    """
    if group_size < 1:
        raise ConfigError(f"group_size must be >= 1 (the positive plus its negatives), got {group_size}")
    return torch.arange(batch_size, device=device) * group_size


def _check_columns(positives: torch.Tensor, negatives: Sequence[torch.Tensor]) -> None:
    if positives.ndim != 2:
        raise ConfigError(f"positives: expected shape (b, d), got {tuple(positives.shape)}")
    for index, column in enumerate(negatives):
        if tuple(column.shape) != tuple(positives.shape):
            raise ConfigError(
                f"negatives[{index}]: expected shape {tuple(positives.shape)} like the positives, "
                f"got {tuple(column.shape)}"
            )


def _as_columns(negatives: Sequence[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
    if isinstance(negatives, torch.Tensor):
        if negatives.ndim != 3:
            raise ConfigError(
                f"negatives: expected (b, m, d) or a list of (b, d), got {tuple(negatives.shape)}"
            )
        return list(negatives.unbind(1))
    return list(negatives)


def stacked_keys(
    positives: torch.Tensor, negatives: Sequence[torch.Tensor] | torch.Tensor = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and labels in the stacked layout.

    Args:
        positives: (b, d) positive embeddings.
        negatives: m tensors of shape (b, d) (column j = every query's j-th negative) or one (b, m, d).

    Returns:
        ``keys`` (b·(m+1), d) and ``labels`` (b,) int64.

    Example:
        >>> keys, labels = stacked_keys(torch.zeros(2, 4), [torch.ones(2, 4)])
        >>> keys.shape, labels.tolist()
        (torch.Size([4, 4]), [0, 1])
    """
    columns = _as_columns(negatives)
    _check_columns(positives, columns)
    keys = torch.cat([positives, *columns], dim=0) if columns else positives
    return keys, stacked_labels(positives.shape[0], positives.device)


def grouped_keys(
    positives: torch.Tensor, negatives: Sequence[torch.Tensor] | torch.Tensor = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and labels in the grouped layout (``[P_1, N1_1..Nm_1, P_2, ...]``).

    Args:
        positives: (b, d) positive embeddings.
        negatives: m tensors of shape (b, d) or one (b, m, d).

    Returns:
        ``keys`` (b·(m+1), d) and ``labels`` (b,) int64 (= ``arange(b)·(m+1)``).

    Example:
        >>> keys, labels = grouped_keys(torch.zeros(2, 4), torch.ones(2, 3, 4))
        >>> keys.shape, labels.tolist()
        (torch.Size([8, 4]), [0, 4])
    """
    columns = _as_columns(negatives)
    _check_columns(positives, columns)
    group = torch.stack([positives, *columns], dim=1)  # (b, m+1, d)
    keys = group.reshape(-1, positives.shape[1])
    return keys, grouped_labels(positives.shape[0], len(columns) + 1, positives.device)


def text_ids(texts: Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
    """Stable 63-bit ids of texts (:func:`hardbatch.ids.stable_ids`) as a tensor: equal texts, equal ids.

    Use them as ``query_ids`` (the id of each query's positive text) and ``key_ids`` (the id of every key
    text) to mask in-batch duplicates of a positive. O(total text length).

    Example:
        >>> ids = text_ids(["a", "b", "a"])
        >>> bool(ids[0] == ids[2]), bool(ids[0] == ids[1])
        (True, False)
    """
    return torch.from_numpy(stable_ids(texts)).to(device)
