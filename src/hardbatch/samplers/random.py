"""``RandomBatchSampler``: uniformly random batches, the baseline every hard-batch strategy is measured against.

Each epoch draws a fresh permutation from the sampler's ``(seed, epoch)`` RNG and cuts it into consecutive
batches. Equivalent to sentence-transformers' ``DefaultBatchSampler`` but seeded per epoch identically on every
rank, resumable and world-size aware (see :class:`~hardbatch.samplers.base.HardBatchSampler`).

Per epoch: O(N) time and memory.
"""

from __future__ import annotations

from hardbatch.samplers.base import HardBatchSampler

__all__ = ["RandomBatchSampler"]


class RandomBatchSampler(HardBatchSampler):
    """Uniformly random batches, a new permutation every epoch.

    Args:
        dataset, batch_size, drop_last, valid_label_columns, generator, seed, num_examples, world_size:
            see :class:`~hardbatch.samplers.base.HardBatchSampler`.

    Remainder: ``N mod batch_size`` examples form a short last batch (``drop_last=False``, one process) or
    are left out of that epoch (a different random set each epoch); with ``world_size = P`` up to
    ``batch_size · P - 1`` examples are left out so that every rank gets the same number of full batches.

    Example:
        >>> sampler = RandomBatchSampler(num_examples=10, batch_size=4, drop_last=False, seed=1)
        >>> [len(b) for b in sampler]
        [4, 4, 2]
    """

    rng_salt = 0x5A1

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        order = self.rng(epoch).permutation(self.num_examples)
        return [
            order[start : start + self.batch_size].tolist() for start in range(0, order.size, self.batch_size)
        ]
