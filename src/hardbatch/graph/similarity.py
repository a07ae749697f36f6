"""Chunked similarity: the one place where (rows × N) similarity blocks are produced.

Every stage that needs "each row against every key" (exact kNN, thresholded graphs, hardness metrics,
retrieval evaluation) iterates over these blocks, so peak memory is O(chunk_size × N) and no N × N matrix
is ever allocated.

Time O(N_rows · N_keys · d), memory O(chunk_size · N_keys) on ``device``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import torch

from hardbatch.device import resolve_device

__all__ = ["RowSubset", "as_tensor", "block_scores", "iter_similarity_blocks"]


class RowSubset:
    """Rows ``ids`` of a (N, d) numpy array (memory-mapped included), read only when sliced.

    ``subset[a:b]`` returns ``array[ids[a:b]]`` (a copy of those rows only), so a search that reads its keys
    block by block (:func:`hardbatch.graph.knn.knn_exact` with ``key_block_size``) never holds the whole
    subset; converting it whole (``np.asarray(subset)``) reads all its rows. Memory O(len(ids)) for the ids.

    Example:
        >>> subset = RowSubset(np.arange(10.0).reshape(5, 2), np.array([4, 1, 3]))
        >>> len(subset), subset[1:3].tolist()
        (3, [[2.0, 3.0], [6.0, 7.0]])
    """

    def __init__(self, array: np.ndarray, ids: np.ndarray) -> None:
        self.array = array
        self.ids = np.asarray(ids, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.ids), *self.array.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def __getitem__(self, item: slice | np.ndarray) -> np.ndarray:
        return np.asarray(self.array[self.ids[item]])

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        rows = np.asarray(self.array[self.ids])
        return rows if dtype is None else rows.astype(dtype)


def as_tensor(
    array: np.ndarray | torch.Tensor, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Move an array (numpy, memory-mapped numpy or torch) to ``device`` as ``dtype`` without extra copies."""
    if isinstance(array, torch.Tensor):
        return array.to(device=device, dtype=dtype)
    with warnings.catch_warnings():
        # Read-only memory maps are never written through the tensor; copying them would defeat the mmap.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(array)).to(device=device, dtype=dtype)


def block_scores(row_t: torch.Tensor, key_t: torch.Tensor) -> torch.Tensor:
    """(R, B) fp32 ``row_t @ key_t.T``; one key is padded to two so that the product stays a matrix product.

    BLAS computes a one-column product as a matrix-vector product (gemv) whose rounding differs from the
    matrix kernel's: the last key block of a blocked search (N_keys = j·B + 1) would then score its key in
    other bits than the unblocked search does. Used by every key-blocked pass (kNN, threshold graph).

    Args:
        row_t: (R, d) float32 tensor.
        key_t: (B, d) float32 tensor on the same device.

    Example:
        >>> block_scores(torch.ones(2, 3), torch.ones(1, 3)).tolist()
        [[3.0], [3.0]]
    """
    if len(key_t) == 1:
        return (row_t @ torch.cat([key_t, torch.zeros_like(key_t)]).T)[:, :1].contiguous()
    return row_t @ key_t.T


def iter_similarity_blocks(
    rows: np.ndarray | torch.Tensor,
    keys: np.ndarray | torch.Tensor,
    *,
    chunk_size: int = 4096,
    device: str | torch.device | None = "auto",
    normalize: bool = False,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, rows[start:start+chunk] @ keys.T)`` blocks in fp32 on ``device``.

    Args:
        rows: (N_rows, d) float array.
        keys: (N_keys, d) float array; kept resident on ``device`` for the whole iteration.
        chunk_size: rows per block; peak extra memory is ``chunk_size * N_keys * 4`` bytes.
        device: "auto" (CUDA if available), or any torch device.
        normalize: L2-normalise both sides first (cosine similarity).
    """
    dev = resolve_device(device)
    key_t = as_tensor(keys, dev)
    if normalize:
        key_t = torch.nn.functional.normalize(key_t, dim=1)
    for start in range(0, len(rows), chunk_size):
        block = as_tensor(rows[start : start + chunk_size], dev)
        if normalize:
            block = torch.nn.functional.normalize(block, dim=1)
        yield start, block @ key_t.T
