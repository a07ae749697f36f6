from __future__ import annotations

import numpy as np
import pytest
import torch

from hardbatch.errors import ConfigError, DataError
from hardbatch.io import hash_array
from hardbatch.mining import cluster_hardness, mine_b3


def planted(groups: int, size: int, dim: int = 32, noise: float = 0.3, extra: int = 0, seed: int = 0):
    """Embeddings of `groups` planted groups of `size` members (+ `extra` unrelated rows), shuffled.

    Within a group, members 2t and 2t+1 are near-duplicate "twins" (each other's top-1 teacher neighbour):
    with skip=1 the twin is skipped as a likely false negative and the other group mates fill the window.
    """
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.repeat(np.arange(groups), size), groups + np.arange(extra)])
    twins = np.concatenate([np.arange(groups * size) // 2, groups * size + np.arange(extra)])
    order = rng.permutation(labels.size)
    labels, twins = labels[order], twins[order]
    centers = rng.normal(size=(labels.max() + 1, dim))
    shared = centers[labels] + 0.5 * noise * rng.normal(size=(twins.max() + 1, dim))[twins]
    query = shared + 0.2 * noise * rng.normal(size=(labels.size, dim))
    positive = shared + 0.2 * noise * rng.normal(size=(labels.size, dim))
    return query.astype(np.float32), positive.astype(np.float32), labels


def twin_of(labels_size: int, seed: int = 0) -> np.ndarray:
    """The twin's example id of each row of `planted(...)` (same seed, no extras)."""
    order = np.random.default_rng(seed).permutation(labels_size)
    twins = (np.arange(labels_size) // 2)[order]
    partner = np.empty(labels_size, dtype=np.int64)
    for t in np.unique(twins):
        a, b = np.flatnonzero(twins == t)
        partner[a], partner[b] = b, a
    return partner


@pytest.mark.parametrize(("skip", "window"), [(0, 7), (1, 6)])
def test_planted_groups_are_recovered(skip, window):
    query, positive, labels = planted(groups=20, size=8, extra=3)
    plan = mine_b3(query, positive, batch_size=16, cluster_size=8, skip=skip, window=window, device="cpu")
    assert plan.num_clusters == 20 and plan.remainder.size == 3
    assert all(np.unique(labels[c]).size == 1 for c in plan.clusters)
    assert set(labels[plan.remainder].tolist()) == set(range(20, 23))
    stats = plan.stats
    assert stats["partition"]["cut"] == 0 and stats["graph"]["mutual_edges"] > 0
    assert set(stats["stages"]) >= {"knn", "graph", "partition"}
    stages = stats["stages"].values()
    assert all(v["peak_rss_mb"] > 0 for v in stages)
    # The stages run one after the other inside the total (each rounded to the millisecond).
    assert 0 < sum(v["seconds"] for v in stages) <= stats["total_seconds"] + 1e-3 * len(stats["stages"])


def test_skip_drops_the_top_ranks():
    query, positive, labels = planted(groups=10, size=8)
    partner = twin_of(len(labels))
    with_skip = mine_b3(query, positive, batch_size=8, cluster_size=8, skip=1, window=6, device="cpu")
    no_skip = mine_b3(query, positive, batch_size=8, cluster_size=8, skip=0, window=7, device="cpu")
    rows = np.arange(len(labels))
    assert not with_skip.window[rows, partner].any()  # the twin is everyone's rank 0: skipped
    assert no_skip.window[rows, partner].all()
    assert with_skip.stats["graph"]["mutual_edges"] == 10 * (28 - 4)  # per group: 8-clique minus 4 twin pairs


def test_batches_are_far_harder_than_random():
    # Topics of 50 examples: clusters of 8 cannot be whole topics, yet batches must be much harder.
    query, positive, _ = planted(groups=16, size=50, noise=0.8, seed=1)
    plan = mine_b3(query, positive, batch_size=32, cluster_size=8, skip=3, window=20, device="cpu")
    mined = np.array(plan.batches(0))
    random = np.random.default_rng(0).permutation(len(query))[: mined.size].reshape(mined.shape)
    hard, easy = cluster_hardness(query, positive, mined), cluster_hardness(query, positive, random)
    assert hard > 3 * easy and hard > easy + 0.1
    assert plan.stats["hardness"]["cluster_mean_sim"] > plan.stats["hardness"]["random_mean_sim"] + 0.5


def test_sources_are_mined_separately_and_batched_per_source():
    query, positive, _ = planted(groups=8, size=8)
    # Two sources with identical embeddings: across-source neighbours would be the best ones.
    q2, p2 = np.concatenate([query, query]), np.concatenate([positive, positive])
    sources = ["a"] * len(query) + ["b"] * len(query)
    plan = mine_b3(q2, p2, batch_size=16, cluster_size=8, skip=0, window=7, sources=sources, device="cpu")
    codes = plan.example_sources()
    assert plan.source_names == ["a", "b"] and plan.params["per_source"]
    assert all(np.unique(codes[c]).size == 1 for c in plan.clusters)
    assert all(np.unique(codes[b]).size == 1 for b in plan.batches(0))
    mixed = [b for e in range(5) for b in plan.batches(e, same_source=False)]
    assert any(np.unique(codes[b]).size == 2 for b in mixed)


def test_false_negative_filters_remove_edges():
    query, positive, labels = planted(groups=6, size=8)
    base = mine_b3(query, positive, batch_size=8, cluster_size=8, skip=0, window=7, device="cpu")
    same_text = mine_b3(
        query,
        positive,
        batch_size=8,
        cluster_size=8,
        skip=0,
        window=7,
        positive_texts=[f"topic {label}" for label in labels],  # group mates share their positive text
        device="cpu",
    )
    capped = mine_b3(query, positive, batch_size=8, cluster_size=8, skip=0, window=7, max_score=-2.0)
    margin = mine_b3(query, positive, batch_size=8, cluster_size=8, skip=0, window=7, absolute_margin=5.0)
    assert base.stats["graph"]["mutual_edges"] > 0
    for plan in (same_text, capped, margin):
        assert plan.stats["graph"]["directed_edges"] == 0 and plan.num_clusters == 6  # METIS without edges


def test_hnsw_backend_reports_recall_and_matches_exact_clusters():
    query, positive, labels = planted(groups=12, size=8)
    plan = mine_b3(query, positive, batch_size=16, cluster_size=8, skip=0, window=7, knn="hnsw", device="cpu")
    assert plan.stats["knn_recall"] > 0.95
    assert all(np.unique(labels[c]).size == 1 for c in plan.clusters)


def test_hashes_determinism_and_torch_input():
    query, positive, _ = planted(groups=6, size=8)
    a = mine_b3(query, positive, batch_size=16, cluster_size=8, skip=1, window=6, device="cpu")
    b = mine_b3(
        torch.from_numpy(query), torch.from_numpy(positive), batch_size=16, cluster_size=8, skip=1, window=6
    )
    assert a.hashes["query_emb"] == hash_array(query) and a.hashes["positive_emb"] == hash_array(positive)
    assert a.fingerprint == b.fingerprint and a.hashes == b.hashes


def test_tiny_groups_and_huge_skip_give_an_empty_graph():
    query, positive, _ = planted(groups=4, size=8)
    plan = mine_b3(query, positive, batch_size=8, cluster_size=8, skip=500, window=10, device="cpu")
    assert plan.stats["graph"]["directed_edges"] == 0 and plan.num_clusters == 4


def test_clear_errors():
    query, positive, _ = planted(groups=4, size=8)
    bad = query.copy()
    bad[5, 3] = np.nan
    with pytest.raises(DataError, match="query embeddings: row 5"):
        mine_b3(bad, positive, batch_size=8, cluster_size=8)
    with pytest.raises(DataError, match="mismatched lengths"):
        mine_b3(query, positive[:-1], batch_size=8, cluster_size=8)
    with pytest.raises(DataError, match="dimension"):
        mine_b3(query, positive[:, :5], batch_size=8, cluster_size=8)
    with pytest.raises(ConfigError, match="multiple of 8"):
        mine_b3(query, positive, batch_size=12, cluster_size=8)
    with pytest.raises(ConfigError, match="larger than the data"):
        mine_b3(query, positive, batch_size=64, cluster_size=8)
    with pytest.raises(ConfigError, match="knn backend"):
        mine_b3(query, positive, batch_size=8, cluster_size=8, knn="annoy")
    with pytest.raises(DataError, match="mismatched lengths"):
        mine_b3(query, positive, batch_size=8, cluster_size=8, sources=["a"] * 3)
