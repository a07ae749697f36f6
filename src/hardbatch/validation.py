"""Input checks shared by every stage that accepts embeddings or sizes from a user."""

from __future__ import annotations

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
) -> None:
    """Raise :class:`DataError` unless ``array`` is a finite 2-D float matrix of the expected shape.

    ``name`` is how the user knows the array (a file path or "query embeddings"); it starts the message.
    Finiteness is checked in chunks so a memory-mapped file is never fully loaded.
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


def check_same_length(**sizes: int) -> None:
    """Raise :class:`DataError` unless all named sizes are equal: ``check_same_length(queries=10, positives=9)``."""
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{key}={value}" for key, value in sizes.items())
        raise DataError(f"mismatched lengths: {listed}")


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
