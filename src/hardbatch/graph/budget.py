"""Key blocks sized from a memory budget: ``key_block_size="auto"`` with ``memory_budget="4GiB"``.

The exact passes that read their keys block by block (:func:`hardbatch.graph.knn.knn_exact` for B3,
:func:`hardbatch.graph.threshold.threshold_graph` for GCBS) hold one block of B keys and one score block of
``chunk × B`` entries at a time. Each stage states that working set as a function of B (its
``*_working_set`` function, next to its code); :func:`key_block_for_budget` picks the largest B whose
working set fits the budget, by bisection over [``min(N_keys, MIN_KEY_BLOCK)``, N_keys]. The working-set
formulas are upper bounds, monotone in B, so the bisection's answer fits.

The budget covers what B controls (resident keys, the score block and its selection temporaries, the row
block); each stage's output (B3's ``N_rows × k`` running top lists, GCBS's ``nnz`` edges), torch itself and
the pages of memory-mapped inputs the OS keeps cached (file-backed, reclaimable) come on top and are stated
in each stage's docstring.

Time O(log N_keys) evaluations of the formula; memory O(1).

Example:
    >>> parse_memory_size("4GiB")
    4294967296
    >>> key_block_for_budget(1 << 20, 10_000, lambda b: 100 * b, "a pass")
    10000
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from hardbatch.errors import ConfigError

__all__ = [
    "MIN_KEY_BLOCK",
    "check_key_block_options",
    "format_bytes",
    "key_block_for_budget",
    "key_shape",
    "parse_memory_size",
    "resolve_key_block_size",
]

#: Smallest automatic key block. Below it the per-block costs dominate (every block re-reads all query rows
#: and pays its own selection), so a budget that does not fit this many keys is refused, not crawled through.
MIN_KEY_BLOCK = 256

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_memory_size(value: int | float | str, what: str = "memory_budget") -> int:
    """Bytes from ``4294967296``, ``"4GiB"``, ``"512MiB"``, ``"2GB"`` (decimal) or ``"1.5G"`` (binary).

    Units are case-insensitive: B, KB/MB/GB/TB (powers of 1000), KiB/MiB/GiB/TiB and the shorthands
    K/M/G/T (powers of 1024).

    Raises:
        ConfigError: not a positive size (the message names ``what``).

    Example:
        >>> parse_memory_size("1.5G"), parse_memory_size("2GB"), parse_memory_size(1024)
        (1610612736, 2000000000, 1024)
    """
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a size in bytes or like '4GiB', got {value!r}")
    if isinstance(value, int | float):
        number, unit = float(value), ""
    else:
        match = _SIZE.match(str(value))
        if match is None or match.group(2).lower() not in _UNITS:
            raise ConfigError(
                f"{what} must be a size like 4GiB, 512MiB, 2GB or a number of bytes, got {value!r}"
            )
        number, unit = float(match.group(1)), match.group(2).lower()
    size = number * _UNITS[unit]
    if not math.isfinite(size) or size < 1:
        raise ConfigError(f"{what} must be at least one byte, got {value!r}")
    return int(size)


def format_bytes(size: int) -> str:
    """``1536 << 20`` → ``"1.50 GiB"``: sizes in messages, binary units.

    Example:
        >>> format_bytes(1536 << 20), format_bytes(300)
        ('1.50 GiB', '300 B')
    """
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{int(size)} B"


def check_key_block_options(key_block_size: int | str | None, memory_budget: int | str | None) -> None:
    """Reject contradictory or malformed key-block options before any work is done.

    ``key_block_size`` is None (all keys resident, or "auto" when a budget is given), a positive integer,
    or ``"auto"`` (needs ``memory_budget``); an explicit integer together with a budget is a contradiction.

    Raises:
        ConfigError: naming the field at fault.
    """
    from hardbatch.validation import check_chunk_size

    if memory_budget is not None:
        parse_memory_size(memory_budget)
    if key_block_size == "auto":
        if memory_budget is None:
            raise ConfigError("key_block_size='auto' needs memory_budget (e.g. '4GiB')")
        return
    if isinstance(key_block_size, str):
        raise ConfigError(f"key_block_size must be a positive integer or 'auto', got {key_block_size!r}")
    check_chunk_size(key_block_size, "key_block_size")
    if key_block_size is not None and memory_budget is not None:
        raise ConfigError(
            f"give key_block_size={key_block_size} or memory_budget={memory_budget!r}, not both "
            "(the budget chooses the key block)"
        )


def key_shape(keys: Any) -> tuple[int, int]:
    """``(N_keys, d)`` of a 2-D key array, or a shape given as a tuple (to size blocks before the keys exist).

    Example:
        >>> import numpy as np
        >>> key_shape((300, 8)), key_shape(np.zeros((3, 2)))
        ((300, 8), (3, 2))
    """
    if isinstance(keys, tuple):
        return int(keys[0]), int(keys[1])
    return len(keys), int(keys.shape[1])


def key_block_for_budget(budget: int, num_keys: int, working_set: Callable[[int], int], stage: str) -> int:
    """Largest key block B in [min(N_keys, MIN_KEY_BLOCK), N_keys] with ``working_set(B) <= budget``.

    Args:
        budget: bytes available to the pass.
        num_keys: N_keys, the largest useful block.
        working_set: bytes the pass holds with blocks of B keys (an upper bound, nondecreasing in B).
        stage: what runs (for the error message), e.g. "the exact kNN (fp32)".

    Raises:
        ConfigError: even the smallest block does not fit; the message gives what it needs.

    Example:
        >>> key_block_for_budget(100_000, 10**6, lambda b: 1000 + 30 * b, "a pass")
        3300
    """
    lo = min(max(1, int(num_keys)), MIN_KEY_BLOCK)
    need = int(working_set(lo))
    if need > budget:
        raise ConfigError(
            f"memory_budget={format_bytes(budget)} is too small for {stage}: the smallest key block "
            f"({lo} keys) needs {format_bytes(need)}; raise the budget or give a smaller chunk_size"
        )
    hi = max(lo, int(num_keys))
    while lo < hi:  # invariant: lo fits
        mid = (lo + hi + 1) // 2
        if working_set(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def resolve_key_block_size(
    key_block_size: int | str | None,
    memory_budget: int | str | None,
    num_keys: int,
    working_set: Callable[[int], int],
    stage: str,
) -> int | None:
    """The key block a pass runs with: None (all keys), the given integer, or the budget's choice.

    ``memory_budget`` alone means ``key_block_size="auto"``.

    Raises:
        ConfigError: see :func:`check_key_block_options` and :func:`key_block_for_budget`.
    """
    check_key_block_options(key_block_size, memory_budget)
    if memory_budget is None:
        return None if key_block_size is None else int(key_block_size)
    return key_block_for_budget(parse_memory_size(memory_budget), num_keys, working_set, stage)
