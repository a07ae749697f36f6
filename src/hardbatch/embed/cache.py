"""Embedding files: a float32 ``.npy`` (memory-mappable) plus a JSON sidecar describing how it was built.

The sidecar ``<name>.meta.json`` records the model id and fingerprint, the hash and count of the texts, the
maximum sequence length and normalisation. A cache is reused only when all of these match the current
request; otherwise it is *stale* and rebuilt (or reported, with ``on_stale="error"``) — never silently used.

Writes are atomic and ordered so that a crash can never pair new sidecar with old array or vice versa:
the old sidecar is removed first, the array is written to a temporary file and renamed, and the new
sidecar is written last. An array without a sidecar is therefore always treated as stale.

Loading is O(1) memory (``np.load(mmap_mode="r")``) plus a chunked finiteness check, O(N·d) time.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hardbatch import __version__
from hardbatch.errors import DataError, StaleCacheError
from hardbatch.io import atomic_path, read_json, write_json
from hardbatch.validation import check_embeddings

__all__ = ["FORMAT", "as_embeddings", "load_embeddings", "read_cache", "save_embeddings", "sidecar_path"]

FORMAT = "hardbatch.embeddings/1"
# Fields that must match for a cache to be reused (the rest of the sidecar is informational).
KEY_FIELDS = ("format", "model_fingerprint", "texts_sha256", "num_texts", "max_seq_length", "normalize")
logger = logging.getLogger("hardbatch.embed")


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``emb/query.npy`` → ``emb/query.meta.json``."""
    path = Path(path)
    return path.with_name(path.stem + ".meta.json")


def load_embeddings(
    path: str | os.PathLike[str], rows: int | None = None, dim: int | None = None, *, mmap: bool = True
) -> np.ndarray:
    """Load a user-supplied or cached ``.npy`` embedding matrix, checking shape and finiteness.

    Args:
        path: a ``.npy`` file holding a (rows, dim) float array.
        rows: expected number of rows (one per text), or None.
        dim: expected embedding dimension, or None.
        mmap: memory-map float32 files instead of reading them (other float dtypes are converted).

    Returns:
        (rows, dim) float32 array (read-only memory map when ``mmap`` and the file is float32).

    Raises:
        DataError: missing/unreadable file, not 2-D, wrong rows/dim, integer dtype, or NaN/inf (names the
            first bad row).

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "emb.npy"
        >>> np.save(path, np.ones((3, 4), dtype=np.float32))
        >>> load_embeddings(path, rows=3, dim=4).shape
        (3, 4)
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: embedding file not found")
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        # An empty or truncated file raises EOFError, whose message may be empty.
        raise DataError(f"{path}: not a readable .npy file ({exc or type(exc).__name__})") from exc
    check_embeddings(array, str(path), rows=rows, dim=dim)
    if array.dtype != np.float32:
        array = np.asarray(array, dtype=np.float32)
    return array


def as_embeddings(
    value: np.ndarray | Any | str | os.PathLike[str],
    name: str,
    rows: int | None = None,
    dim: int | None = None,
) -> np.ndarray:
    """An (N, d) float32 matrix from an array, a tensor or a ``.npy`` path (via :func:`load_embeddings`).

    Args:
        value: a numpy array, a torch tensor, or the path of a ``.npy`` file (memory-mapped).
        name: what the matrix is (``query_emb``...), named in errors about in-memory values.
        rows: expected number of rows, or None.
        dim: expected dimension, or None.

    Raises:
        DataError: missing or unreadable file, wrong shape, non-float or non-finite values.
    """
    if isinstance(value, str | os.PathLike):
        return load_embeddings(value, rows=rows, dim=dim)
    if hasattr(value, "detach"):
        value = value.detach().cpu().float().numpy()
    array = np.asarray(value)
    check_embeddings(array, name, rows=rows, dim=dim)
    return array if array.dtype == np.float32 else array.astype(np.float32)


def cache_key(
    model_info: dict[str, str], texts_sha256: str, num_texts: int, max_seq_length: int | None, normalize: bool
) -> dict[str, Any]:
    """The sidecar fields that decide whether a cache may be reused."""
    return {
        "format": FORMAT,
        "model_id": model_info["id"],
        "model_fingerprint": model_info["fingerprint"],
        "texts_sha256": texts_sha256,
        "num_texts": num_texts,
        "max_seq_length": max_seq_length,
        "normalize": bool(normalize),
    }


def read_cache(
    path: str | os.PathLike[str], key: dict[str, Any], *, on_stale: Literal["rebuild", "error"] = "rebuild"
) -> np.ndarray | None:
    """Return the cached array at ``path`` when its sidecar matches ``key``; None when absent or stale.

    A stale cache is logged (``on_stale="rebuild"``) or raises :class:`StaleCacheError` (``"error"``),
    naming the fields that differ.
    """
    path = Path(path)
    if not path.exists():
        return None
    reason = _stale_reason(path, key)
    if reason is None:
        return load_embeddings(path, rows=key["num_texts"])
    message = f"{path}: stale embedding cache ({reason})"
    if on_stale == "error":
        raise StaleCacheError(message)
    logger.warning("%s; rebuilding", message)
    return None


def _stale_reason(path: Path, key: dict[str, Any]) -> str | None:
    meta_path = sidecar_path(path)
    if not meta_path.exists():
        return f"no sidecar {meta_path.name}, so its origin is unknown"
    try:
        meta = read_json(meta_path)
    except (ValueError, OSError) as exc:
        return f"unreadable sidecar {meta_path.name}: {exc}"
    differing = [field for field in KEY_FIELDS if meta.get(field) != key[field]]
    if differing:
        return "differs in " + ", ".join(
            f"{field} (cached {meta.get(field)!r}, now {key[field]!r})" for field in differing
        )
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        return f"unreadable array: {exc}"
    if list(array.shape) != meta.get("shape") or str(array.dtype) != meta.get("dtype"):
        return f"array shape {array.shape}/{array.dtype} does not match its sidecar"
    return None


def save_embeddings(path: str | os.PathLike[str], array: np.ndarray, key: dict[str, Any]) -> np.ndarray:
    """Write ``array`` (float32) and its sidecar atomically; return the file memory-mapped read-only."""
    path = Path(path)
    meta_path = sidecar_path(path)
    meta_path.unlink(missing_ok=True)  # from here on the old array can no longer be trusted
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    meta = {**key, "shape": list(array.shape), "dtype": "float32", "hardbatch_version": __version__}
    write_json(meta_path, meta)
    return np.load(path, mmap_mode="r", allow_pickle=False)
