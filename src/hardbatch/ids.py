"""Stable ids of texts: equal texts get equal ids, in every process and every run.

One function serves every place that needs to know whether two texts are the same: the loss's
false-negative mask (``hardbatch.losses.text_ids``), B3's same-text filter, the no-duplicates sampler.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["stable_ids"]


def _as_bytes(item: Any) -> bytes:
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, bytes):
        return item
    key = getattr(item, "key", None)  # content-addressed values (hardbatch.data.images.ImageRef)
    if isinstance(key, str):
        return b"key:" + key.encode("ascii")
    raise TypeError(f"stable_ids takes texts, bytes or values with a content key, got {type(item).__name__}")


def stable_ids(items: Iterable[Any]) -> np.ndarray:
    """63-bit ids (blake2b of the UTF-8 bytes), one per item; non-negative int64.

    Collisions are negligible (probability about n² / 2⁶⁴). O(total text length).

    Args:
        items: texts (``str``, hashed as UTF-8), raw ``bytes``, or values with a string ``key`` naming their
            content (images: :class:`hardbatch.data.images.ImageRef`, equal content → equal id).

    Returns:
        (n,) int64 array.

    Example:
        >>> ids = stable_ids(["a", "b", "a"])
        >>> bool(ids[0] == ids[2]), bool(ids[0] == ids[1])
        (True, False)
    """
    values = [
        int.from_bytes(hashlib.blake2b(_as_bytes(item), digest_size=8).digest(), "little") >> 1
        for item in items
    ]
    return np.asarray(values, dtype=np.int64).reshape(-1)
