"""Every hardbatch sampler passes the same property suite (see ``properties.py``).

To add a sampler, append ``(name, factory, options)`` to ``SAMPLER_FACTORIES``; a factory takes
``seed=, world_size=, drop_last=`` and returns a fresh sampler over fixed data.
"""

from __future__ import annotations

import numpy as np
import pytest
from properties import base_remainder, check_sampler_properties, planted_embeddings

from hardbatch.samplers import (
    GCBSBatchSampler,
    NoDuplicatesBatchSampler,
    RandomBatchSampler,
    SourceBatchSampler,
    TopicBatchSampler,
)

pytestmark = pytest.mark.filterwarnings("ignore::hardbatch.mining.gcbs.GraphCollapseWarning")

N, B = 203, 8  # N not a multiple of B, B * world_size, or anything else convenient
QUERY, POSITIVE, TOPIC = planted_embeddings(num_topics=7, per_topic=29, seed=1)
ROWS = [{"query": f"q{i}", "positive": f"p{i}", "negative": [f"n{i}a", f"n{i}b"]} for i in range(N)]
SOURCES = np.array(["alpha"] * 90 + ["beta"] * 70 + ["gamma"] * 43)
TOPIC_LABELS = np.asarray(TOPIC)


def _moving_embed_fn(epoch: int) -> tuple[np.ndarray, np.ndarray]:
    # Like a model being trained: the embeddings drift every epoch.
    drift = np.random.default_rng(epoch).normal(scale=0.05, size=QUERY.shape).astype(np.float32)
    return QUERY + drift, POSITIVE + drift


def make_random(**kw):
    return RandomBatchSampler(num_examples=N, batch_size=B, **kw)


def make_nodup(**kw):
    return NoDuplicatesBatchSampler(ROWS, batch_size=B, **kw)


def make_topic(**kw):
    return TopicBatchSampler(num_examples=N, batch_size=B, labels=TOPIC_LABELS, **kw)


def make_topic_drop(**kw):
    return TopicBatchSampler(num_examples=N, batch_size=B, labels=TOPIC_LABELS, leftover="drop", **kw)


def make_source(**kw):
    return SourceBatchSampler(num_examples=N, batch_size=B, sources=SOURCES, **kw)


def make_gcbs(**kw):
    return GCBSBatchSampler(
        num_examples=N, batch_size=B, embed_fn=_moving_embed_fn, target_degree=B, device="cpu", **kw
    )


def _per_group_remainder(groups: int):
    # Each group may leave out less than one global batch, plus the base's tail.
    return lambda s: groups * (s.batch_size * s.world_size - 1) + base_remainder(s)


SAMPLER_FACTORIES = [
    ("random", make_random, {}),
    ("nodup", make_nodup, {}),
    ("topic", make_topic, {}),
    ("topic-drop", make_topic_drop, {"max_uncovered": _per_group_remainder(7)}),
    ("source", make_source, {"max_uncovered": _per_group_remainder(3)}),
    ("gcbs", make_gcbs, {"max_examples": 10}),  # each example runs ~10 refreshes
]


@pytest.mark.parametrize(
    ("name", "factory", "options"), SAMPLER_FACTORIES, ids=[f[0] for f in SAMPLER_FACTORIES]
)
def test_sampler_properties(name, factory, options):
    check_sampler_properties(factory, **options)
