"""``RandomHardNegativeBatchSampler``: random batches + h hard negatives per query from the rank window.

The ablation baseline of the B3 paper (Table 2, "Random batches + 5 HN from S", SFR-Embedding style):
batches are uniformly random, and each query gets ``h`` hard negatives drawn uniformly from *its own*
teacher rank window S[i, :] = ranks [p, p + m) of the B3 plan (never a batch member or any member's likely
false negative; see :meth:`hardbatch.mining.BatchPlan.per_query_negatives`). With B3's own batches this
reproduces every row of Table 2 with hardbatch alone: random, random + h HN (this sampler), B3, B3++.

It takes the same plan (``hardbatch mine b3``) or teacher embeddings as :class:`B3BatchSampler`; only the
rank window is used, not the clusters, and the batch size needs not be a multiple of K. Under data
parallelism the random global batch of ``batch_size · P`` is split over the ranks, so the exclusions hold
for the whole global batch.

Per epoch O(N) (a permutation); per batch O(|B| · (p + m + h)) for the negatives.
"""

from __future__ import annotations

from collections.abc import Sequence

from hardbatch.samplers.b3 import B3BatchSampler

__all__ = ["RandomHardNegativeBatchSampler"]


class RandomHardNegativeBatchSampler(B3BatchSampler):
    """Uniformly random batches whose queries each get h hard negatives from their own rank window.

    Args:
        Those of :class:`~hardbatch.samplers.b3.B3BatchSampler`; ``num_hard_negatives`` is h per query
        (default 5, the paper's) and ``same_source`` is ignored (batches are random).

    Example:
        >>> import numpy as np, scipy.sparse as sp
        >>> from hardbatch.mining import BatchPlan
        >>> window = sp.csr_array(np.eye(12, k=1, dtype=np.int8) + np.eye(12, k=-11, dtype=np.int8))
        >>> plan = BatchPlan(np.arange(12).reshape(6, 2), np.zeros(0, dtype=np.int64), 12,
        ...                  {"cluster_size": 2, "skip": 0}, window=window)
        >>> sampler = RandomHardNegativeBatchSampler(num_examples=12, batch_size=3, plan=plan,
        ...                                          num_hard_negatives=1)
        >>> batch = sampler.batches(0)[0]
        >>> len(sampler.hard_negatives(batch)), len(sampler)
        (3, 4)
    """

    rng_salt = 0x5A1F
    whole_clusters = False
    mixes_leftovers = False
    default_hard_negatives = 5  # the paper's h
    min_hard_negatives = 1

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        self._active = self.plan_for(epoch)  # re-mined with the student when due (``remine_every``)
        order = self.rng(epoch).permutation(self.num_examples).tolist()
        if not self.splits_global:
            return [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        size = self.global_size
        full = [order[start : start + size] for start in range(0, len(order) - size + 1, size)]
        return self._split_global(full, epoch)

    def __len__(self) -> int:
        if self.splits_global:
            return self.world_size * (self.num_examples // self.global_size)
        n_batches = self.num_examples // self.batch_size
        if not self.full_batches_only:
            return -(-self.num_examples // self.batch_size)
        return n_batches - n_batches % self.world_size

    def hard_negatives(self, batch: Sequence[int], epoch: int | None = None) -> list[int]:
        """h hard negatives per query of ``batch``, query-major (``[i·h, (i+1)·h)`` belong to ``batch[i]``).

        Args:
            batch: the per-device batch, as yielded.
            epoch: default: the epoch of the batch the sampler yielded last.
        """
        if epoch is None:
            epoch = self._yielding_epoch if self._yielding_epoch is not None else self.epoch
        members, rank = self._global_batch_of(batch, int(epoch))
        h = self.num_hard_negatives
        plan = self.plan_for(int(epoch), mine=False)
        ids = plan.per_query_negatives(members, h, epoch=int(epoch), seed=self.seed)
        if rank is None:
            return ids
        share = h * len(batch)
        return ids[rank * share : (rank + 1) * share]
