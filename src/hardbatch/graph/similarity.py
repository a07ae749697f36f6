"""Chunked similarity: the one place where (rows × N) similarity blocks are produced.

Every stage that needs "each row against every key" (exact kNN, thresholded graphs, hardness metrics,
retrieval evaluation) iterates over these blocks, so peak memory is O(chunk_size × N) and no N × N matrix
is ever allocated.

Time O(N_rows · N_keys · d), memory O(chunk_size · N_keys) on ``device``.

Score blocks are written into one reused storage (:class:`ScoreBuffer`) instead of a fresh tensor per
chunk. A 256 MiB fp32 block is above glibc's mmap threshold, so every fresh block is new memory that the
kernel maps and zeroes page by page on first touch; measured on the 2-core development VM, allocating and
touching such a block took 0.4-1.7 s against 0.6 s for the 671 × 100k × 384 matmul that fills it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import torch

from hardbatch.device import resolve_device

__all__ = ["RowSubset", "ScoreBuffer", "as_tensor", "block_scores", "iter_similarity_blocks", "take_rows"]


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


def take_rows(array: np.ndarray | torch.Tensor, ids: np.ndarray) -> np.ndarray | torch.Tensor:
    """Rows ``ids`` of a (N, d) numpy (memory-mapped included) or torch array, as the same kind of array.

    Only those rows are read (a copy of them); a torch input stays on its device.

    Example:
        >>> take_rows(np.arange(6).reshape(3, 2), np.array([2, 0])).tolist()
        [[4, 5], [0, 1]]
    """
    if isinstance(array, torch.Tensor):
        return array[torch.as_tensor(ids, device=array.device)]
    return np.asarray(array[ids])


class ScoreBuffer:
    """One storage reused for successive ``rows @ keys.T`` score blocks (see the module docstring for why).

    :meth:`product` returns a view of the storage: it is valid until the next call, so a caller keeps only
    what it selects from a block, never the block itself. The storage grows to the largest block asked
    for and is reallocated only when a block needs more elements or another dtype or device. The values
    are those of ``rows @ keys.T`` bit for bit (the same matrix product writes into it).

    Example:
        >>> buffer = ScoreBuffer()
        >>> a, b = torch.randn(3, 4), torch.randn(5, 4)
        >>> torch.equal(buffer.product(a, b), a @ b.T)
        True
    """

    def __init__(self) -> None:
        self._storage: torch.Tensor | None = None

    def product(self, rows: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(R, C) ``rows @ keys.T`` for (R, d) ``rows`` and (C, d) ``keys`` of one dtype and device.

        Memory: the storage holds max over calls of R · C elements of that dtype.
        """
        size = rows.shape[0] * keys.shape[0]
        storage = self._storage
        if (
            storage is None
            or storage.numel() < size
            or storage.dtype != rows.dtype
            or storage.device != rows.device
        ):
            self._storage = storage = None  # free the old storage before taking the new one
            self._storage = storage = torch.empty(size, dtype=rows.dtype, device=rows.device)
        out = storage[:size].view(rows.shape[0], keys.shape[0])
        with torch.no_grad():  # out= products do not record autograd history; scores never need it here
            return torch.matmul(rows, keys.T, out=out)


def block_scores(row_t: torch.Tensor, key_t: torch.Tensor, buffer: ScoreBuffer | None = None) -> torch.Tensor:
    """(R, B) ``row_t @ key_t.T``; one key is padded to two so that the product stays a matrix product.

    BLAS computes a one-column product as a matrix-vector product (gemv) whose rounding differs from the
    matrix kernel's: the last key block of a blocked search (N_keys = j·B + 1) would then score its key in
    other bits than the unblocked search does. Used by every key-blocked pass (kNN, threshold graph).

    Args:
        row_t: (R, d) float32 tensor.
        key_t: (B, d) float32 tensor on the same device.
        buffer: write the block into this reused storage (the result is then a view of it, valid until
            the buffer's next product).

    Example:
        >>> block_scores(torch.ones(2, 3), torch.ones(1, 3)).tolist()
        [[3.0], [3.0]]
    """
    if len(key_t) == 1:
        return (row_t @ torch.cat([key_t, torch.zeros_like(key_t)]).T)[:, :1].contiguous()
    return row_t @ key_t.T if buffer is None else buffer.product(row_t, key_t)


def iter_similarity_blocks(
    rows: np.ndarray | torch.Tensor,
    keys: np.ndarray | torch.Tensor,
    *,
    chunk_size: int = 4096,
    device: str | torch.device | None = "auto",
    normalize: bool = False,
    reuse_storage: bool = False,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, rows[start:start+chunk] @ keys.T)`` blocks in fp32 on ``device``.

    Args:
        rows: (N_rows, d) float array.
        keys: (N_keys, d) float array; kept resident on ``device`` for the whole iteration.
        chunk_size: rows per block; peak extra memory is ``chunk_size * N_keys * 4`` bytes.
        device: "auto" (CUDA if available), or any torch device.
        normalize: L2-normalise both sides first (cosine similarity).
        reuse_storage: write every block into one :class:`ScoreBuffer` (faster on CPU); each yielded block
            is then overwritten by the next, so the caller must not keep it.
    """
    dev = resolve_device(device)
    buffer = ScoreBuffer() if reuse_storage else None
    key_t = as_tensor(keys, dev)
    if normalize:
        key_t = torch.nn.functional.normalize(key_t, dim=1)
    for start in range(0, len(rows), chunk_size):
        block = as_tensor(rows[start : start + chunk_size], dev)
        if normalize:
            block = torch.nn.functional.normalize(block, dim=1)
        yield start, block @ key_t.T if buffer is None else buffer.product(block, key_t)
