"""Global batches under data parallelism: one batch of ``batch_size × world_size`` split over the ranks.

The trainer (and accelerate's ``BatchSamplerShard``) gives rank ``r`` per-device batches ``r, r + P,
r + 2P, ...`` of the sampler's stream. A sampler that mines *global* batches (B3: ``|B|/K`` clusters of one
source, the paper's 1024 rows split into 128 per GPU; GCBS: one contiguous chunk of the RCM order) therefore
yields each global batch as ``P`` consecutive slices of ``batch_size``: one optimiser step then trains on
exactly that global batch, every rank taking its slice, and the loss (which gathers every rank's
documents) contrasts every query with the whole global batch. Without this, one step mixes ``P`` unrelated
per-device batches (and, with ``same_source``, ``P`` sources).

Cost: O(N) per epoch (slicing).
"""

from __future__ import annotations

from collections.abc import Sequence

from hardbatch.errors import HardbatchError

__all__ = ["split_global_batches"]


def split_global_batches(
    global_batches: Sequence[Sequence[int]], batch_size: int, world_size: int
) -> list[list[int]]:
    """Cut every global batch of ``batch_size · world_size`` ids into ``world_size`` consecutive slices.

    Args:
        global_batches: batches of exactly ``batch_size · world_size`` example ids.
        batch_size: per-device batch size b.
        world_size: number of ranks P.

    Returns:
        The per-device stream: slice ``r`` of global batch ``g`` is element ``g · P + r``.

    Raises:
        HardbatchError: a global batch of the wrong size (a sampler bug).

    Example:
        >>> split_global_batches([[0, 1, 2, 3], [4, 5, 6, 7]], 2, 2)
        [[0, 1], [2, 3], [4, 5], [6, 7]]
    """
    size = batch_size * world_size
    out: list[list[int]] = []
    for batch in global_batches:
        if len(batch) != size:
            raise HardbatchError(f"a global batch has {len(batch)} ids, expected {batch_size} × {world_size}")
        ids = list(batch)
        out.extend(ids[rank * batch_size : (rank + 1) * batch_size] for rank in range(world_size))
    return out
