from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from properties import base_remainder, check_sampler_properties, planted_embeddings

from hardbatch.errors import ConfigError
from hardbatch.mining import mine_b3
from hardbatch.samplers import SAMPLERS, B3BatchSampler, build_sampler
from hardbatch.samplers.random_hn import RandomHardNegativeBatchSampler

N, K = 203, 4
QUERY, POSITIVE, TOPIC = planted_embeddings(num_topics=7, per_topic=29, seed=1)
PLAN = mine_b3(QUERY, POSITIVE, batch_size=8, cluster_size=K, skip=2, window=12, device="cpu")


def _bound(sampler):
    if sampler.splits_global:
        return sampler.global_size - 1
    return base_remainder(sampler)


def test_property_suite():
    def make(**kw):
        return RandomHardNegativeBatchSampler(
            num_examples=N, batch_size=6, plan=PLAN, num_hard_negatives=2, **kw
        )

    check_sampler_properties(make, max_uncovered=_bound, max_examples=12)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000), epoch=st.integers(0, 50), h=st.integers(1, 4), batch_size=st.integers(2, 12)
)
def test_negatives_are_from_each_querys_window_and_never_in_the_batch(seed, epoch, h, batch_size):
    sampler = RandomHardNegativeBatchSampler(
        num_examples=N, batch_size=batch_size, plan=PLAN, num_hard_negatives=h, seed=seed
    )
    batch = sampler.batches(epoch)[0]
    negatives = sampler.hard_negatives(batch, epoch=epoch)
    assert len(negatives) == h * len(batch) and len(set(negatives)) == len(negatives)
    assert not set(negatives) & set(PLAN.excluded_negatives(batch).tolist())
    excluded = set(PLAN.excluded_negatives(batch).tolist())
    from_windows = 0
    for i, member in enumerate(batch):
        own = set(negatives[i * h : (i + 1) * h])
        window = set(PLAN.window[[member]].indices.tolist())
        # From the member's own window, unless its allowed items are all used up by this batch already.
        assert own <= window or (window - excluded) <= set(negatives[: (i + 1) * h])
        from_windows += len(own & window)
    assert from_windows >= len(negatives) // 2  # mostly window items, not the uniform fill


def test_batches_are_random_not_clusters():
    sampler = RandomHardNegativeBatchSampler(num_examples=N, batch_size=8, plan=PLAN, num_hard_negatives=1)
    b3 = B3BatchSampler(num_examples=N, batch_size=8, plan=PLAN)
    labels = PLAN.labels()
    whole = lambda batches: np.mean([np.bincount(labels[b][labels[b] >= 0]).max() == K for b in batches])  # noqa: E731
    assert whole(b3.batches(0)) == 1.0 and whole(sampler.batches(0)) < 0.2
    topic_purity = np.mean([np.bincount(TOPIC[b]).max() / 8 for b in sampler.batches(0)])
    assert topic_purity < 0.6  # random batches mix the 7 planted topics


def test_registry_and_errors():
    assert SAMPLERS["random-hn"] is RandomHardNegativeBatchSampler
    sampler = build_sampler("random-hn", None, 6, num_examples=N, plan=PLAN)
    assert sampler.num_hard_negatives == 5  # the paper's h
    with pytest.raises(ConfigError, match="num_hard_negatives >= 1"):
        RandomHardNegativeBatchSampler(num_examples=N, batch_size=6, plan=PLAN, num_hard_negatives=0)
