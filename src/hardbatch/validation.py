"""Input checks shared by every stage that accepts embeddings or sizes from a user."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hardbatch.errors import ConfigError, DataError

__all__ = ["check_batch_size", "check_embeddings", "check_same_length"]

ArrayLike = np.ndarray | torch.Tensor


def check_embeddings(
    array: ArrayLike,
    name: str,
    *,
    rows: int | None = None,
    dim: int | None = None,
    chunk_rows: int = 65536,
    allow_zero_rows: bool = False,
) -> None:
    """Raise :class:`DataError` unless ``array`` is a finite, non-degenerate 2-D float matrix.

    Degenerate means: dimension 0 (nothing to compare), or a row of norm 0 (its cosine similarity to
    anything is undefined, and all-zero embeddings would give random "hard" batches); rows of norm 0 are
    accepted only with ``allow_zero_rows=True``.

    ``name`` is how the user knows the array (a file path or "query embeddings"); it starts the message.
    Finiteness and norms are checked in chunks so a memory-mapped file is never fully loaded: O(N · d)
    time, O(chunk_rows · d) memory.

    Example:
        >>> check_embeddings(np.zeros((3, 0), dtype=np.float32), "emb.npy")
        Traceback (most recent call last):
        ...
        hardbatch.errors.DataError: emb.npy: embedding dimension is 0 (shape (3, 0))
    """
    shape = tuple(array.shape)
    if len(shape) != 2:
        raise DataError(f"{name}: expected a 2-D array (rows, dim), got shape {shape}")
    if rows is not None and shape[0] != rows:
        raise DataError(f"{name}: expected {rows} rows (one per example), got {shape[0]}")
    if dim is not None and shape[1] != dim:
        raise DataError(f"{name}: expected dimension {dim}, got {shape[1]}")
    if shape[0] == 0:
        raise DataError(f"{name}: no rows")
    if shape[1] == 0:
        raise DataError(f"{name}: embedding dimension is 0 (shape {shape})")
    is_float = (
        array.dtype.is_floating_point
        if isinstance(array, torch.Tensor)
        else np.issubdtype(array.dtype, np.floating)
    )
    if not is_float:
        raise DataError(f"{name}: expected a floating-point array, got dtype {array.dtype}")
    for start in range(0, shape[0], chunk_rows):
        block = array[start : start + chunk_rows]
        finite = (
            torch.isfinite(block).all(dim=1)
            if isinstance(block, torch.Tensor)
            else np.isfinite(block).all(axis=1)
        )
        if not bool(finite.all()):
            bad = (
                start + int((~finite).nonzero()[0].reshape(-1)[0])
                if isinstance(finite, torch.Tensor)
                else start + int(np.flatnonzero(~finite)[0])
            )
            raise DataError(f"{name}: row {bad} contains NaN or inf")
        if allow_zero_rows:
            continue
        zero = (
            (block == 0).all(dim=1).cpu().numpy()
            if isinstance(block, torch.Tensor)
            else (np.asarray(block) == 0).all(axis=1)
        )
        if zero.any():
            first = start + int(np.flatnonzero(zero)[0])
            count = int(zero.sum())
            raise DataError(
                f"{name}: row {first} is all zeros (norm 0; {count} such rows in rows {start}-"
                f"{start + len(zero) - 1}), so its similarities are undefined; re-embed or drop those rows"
            )


def check_same_length(**sizes: int) -> None:
    """Raise :class:`DataError` unless all named sizes are equal: ``check_same_length(queries=10, positives=9)``."""
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{key}={value}" for key, value in sizes.items())
        raise DataError(f"mismatched lengths: {listed}")


def check_positive(value: Any, name: str) -> None:
    """Raise :class:`ConfigError` naming ``name`` unless ``value`` is a positive integer (bool is not)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def check_chunk_size(chunk_size: int | None, what: str = "chunk_size") -> None:
    """Raise :class:`ConfigError` unless ``chunk_size`` is ``None`` (automatic) or a positive integer."""
    if chunk_size is not None:
        check_positive(chunk_size, what)


def check_batch_size(
    batch_size: int, num_examples: int, *, multiple_of: int | None = None, what: str = "batch_size"
) -> None:
    """Raise :class:`ConfigError` for a batch size that is not positive, too large, or not a multiple."""
    if not isinstance(batch_size, int | np.integer) or batch_size <= 0:
        raise ConfigError(f"{what} must be a positive integer, got {batch_size!r}")
    if batch_size > num_examples:
        raise ConfigError(f"{what}={batch_size} is larger than the data ({num_examples} examples)")
    if multiple_of is not None and batch_size % multiple_of != 0:
        raise ConfigError(f"{what}={batch_size} must be a multiple of {multiple_of}")
