"""Hierarchical B3: coarse shards, then B3 per shard. Invariants of the merged plan."""

from __future__ import annotations

import numpy as np
import pytest

from hardbatch.errors import ConfigError
from hardbatch.mining.hierarchical import coarse_shards, mine_b3_hierarchical
from key_block_cases import bad_key_blocks


def _data(n=1300, dim=12, topics=26, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(topics, dim)) * 3
    topic = rng.integers(0, topics, n)
    q = (centres[topic] + rng.normal(size=(n, dim))).astype(np.float32)
    p = (centres[topic] + rng.normal(size=(n, dim))).astype(np.float32)
    return q, p, topic


def test_coarse_shards_partition_ids_in_multiples_of_k_and_group_topics():
    q, p, topic = _data()
    ids = np.arange(len(q))[::-1].copy()  # any id order
    shards = coarse_shards(q, p, ids, shard_size=400, cluster_size=10, seed=1)
    sizes = [len(s) for s in shards]
    assert max(sizes) <= 400 and all(s % 10 == 0 for s in sizes[:-1])
    np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(len(q)))
    # Topical: most examples of a topic share a shard (a random cut would spread each topic over all shards).
    shard_of = np.empty(len(q), dtype=int)
    for index, shard in enumerate(shards):
        shard_of[shard] = index
    purity = np.mean([np.bincount(shard_of[topic == t]).max() / (topic == t).sum() for t in np.unique(topic)])
    assert purity > 0.8


def _topic_mates_in_one_shard(centroids_per_shard: int) -> float:
    """Mean fraction of topic-mate pairs that share a shard: 40 tight topics of 25 cut into 4 shards."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 32)).astype(np.float32)
    topic = rng.permutation(np.repeat(np.arange(40), 25))
    x = centres[topic] + 0.3 * rng.normal(size=(1000, 32)).astype(np.float32)
    fractions = []
    for seed in range(3):
        shards = coarse_shards(
            x, x, np.arange(1000), shard_size=250, cluster_size=10, seed=seed,
            centroids_per_shard=centroids_per_shard,
        )  # fmt: skip
        owner = np.empty(1000, dtype=np.int64)
        for index, shard in enumerate(shards):
            owner[shard] = index
        for t in range(40):
            members = owner[topic == t]
            fractions.append(np.mean(members[:, None] == members[None, :]))
    return float(np.mean(fractions))


def test_fine_centroids_keep_topics_inside_one_shard():
    # One centroid per shard cuts the affinity-ordered members of a centroid at every shard boundary,
    # splitting many topics; runs of fine centroids put the boundaries between (almost) whole topics.
    assert _topic_mates_in_one_shard(1) < 0.95
    assert _topic_mates_in_one_shard(16) >= 0.97
    with pytest.raises(ConfigError, match="centroids_per_shard"):
        coarse_shards(np.eye(40, dtype=np.float32), np.eye(40, dtype=np.float32), np.arange(40),
                      shard_size=20, cluster_size=10, centroids_per_shard=0)  # fmt: skip
    for bad in ({"centroids_per_shard": 0}, {"examples_per_centroid": -1}):  # one shard: no k-means runs
        with pytest.raises(ConfigError, match=next(iter(bad))):
            coarse_shards(np.eye(40, dtype=np.float32), np.eye(40, dtype=np.float32), np.arange(40),
                          shard_size=40, cluster_size=10, **bad)  # fmt: skip


def test_hierarchical_plan_covers_every_example_once_with_exact_cluster_sizes():
    q, p, _ = _data()
    sources = np.where(np.arange(len(q)) < 1000, "big", "small")
    plan = mine_b3_hierarchical(
        q, p, batch_size=20, cluster_size=10, shard_size=300, sources=sources, skip=2, window=10,
        device="cpu", show_progress=False,
    )  # fmt: skip
    assert plan.clusters.shape[1] == 10
    every = np.concatenate([plan.clusters.reshape(-1), plan.remainder])
    np.testing.assert_array_equal(np.sort(every), np.arange(len(q)))  # each example exactly once
    # Clusters never mix sources, and each source leaves fewer than K examples over.
    names = np.asarray(plan.source_names)
    assert (sources[plan.clusters] == names[plan.cluster_sources][:, None]).all()
    for code, name in enumerate(names):
        assert (plan.remainder_sources == code).sum() < 10, name
    assert plan.params["hierarchical"]["shards"] >= 4 and plan.params["metis_mode"] == "recursive"
    batches = plan.batches(epoch=0)
    assert all(len(b) == 20 for b in batches)


def test_hierarchical_clusters_are_harder_than_random():
    from hardbatch.mining import cluster_hardness

    q, p, _ = _data()
    plan = mine_b3_hierarchical(
        q, p, batch_size=20, cluster_size=10, shard_size=400, skip=2, window=10, device="cpu",
        show_progress=False,
    )  # fmt: skip
    random = np.random.default_rng(0).permutation(len(q))[: plan.clusters.size].reshape(-1, 10)
    assert cluster_hardness(q, p, plan.clusters) > cluster_hardness(q, p, random) + 0.2


def test_shard_size_below_k_is_refused():
    q, p, _ = _data(100)
    with pytest.raises(ConfigError, match="shard_size"):
        coarse_shards(q, p, np.arange(100), shard_size=5, cluster_size=10)


def test_each_source_is_mined_with_its_own_settings_and_texts():
    """Per source, the plan equals mining that source's rows alone with its own skip, window and texts."""
    q, p, topic = _data(900)
    sources = np.where(np.arange(len(q)) % 3 == 0, "a", "b")
    # A quarter of each topic shares a positive text: many candidates to filter inside each shard.
    texts = [f"topic {t}, text {i % 4}" for i, t in enumerate(topic)]
    common = dict(batch_size=20, cluster_size=10, shard_size=250, device="cpu", precision="fp32",
                  show_progress=False)  # fmt: skip
    plan = mine_b3_hierarchical(q, p, sources=sources, positive_texts=texts, skip={"a": 1, "*": 4},
                                window={"a": 6, "*": 12}, **common)  # fmt: skip
    assert plan.params["skip"] == {"a": 1, "b": 4} and plan.params["window"] == {"a": 6, "b": 12}
    unfiltered = mine_b3_hierarchical(q, p, sources=sources, skip={"a": 1, "*": 4}, window={"a": 6, "*": 12},
                                      **common)  # fmt: skip
    assert not np.array_equal(unfiltered.clusters, plan.clusters)  # the texts do filter on this data
    for code, (name, skip, window) in enumerate((("a", 1, 6), ("b", 4, 12))):
        ids = np.flatnonzero(sources == name)
        alone = mine_b3_hierarchical(q[ids], p[ids], positive_texts=[texts[i] for i in ids], skip=skip,
                                     window=window, **common)  # fmt: skip
        np.testing.assert_array_equal(plan.clusters[plan.cluster_sources == code], ids[alone.clusters])
        np.testing.assert_array_equal(plan.remainder[plan.remainder_sources == code], ids[alone.remainder])


# ----------------------------------------------------------------- key blocks and memory budget
KB_COMMON = dict(batch_size=20, cluster_size=10, shard_size=300, skip=2, window=10, device="cpu",
                 precision="fp32", chunk_size=64, show_progress=False)  # fmt: skip


def test_key_blocks_and_a_budget_mine_the_unblocked_hierarchical_plan(tmp_path):
    from hardbatch.graph.knn import knn_working_set

    q, p, _ = _data(600)
    np.save(tmp_path / "p.npy", p)
    mapped = np.load(tmp_path / "p.npy", mmap_mode="r")
    sources = np.where(np.arange(600) < 450, "big", "small")
    for extra in ({}, {"sources": sources}):
        whole = mine_b3_hierarchical(q, p, **KB_COMMON, **extra)
        blocked = mine_b3_hierarchical(q, mapped, key_block_size=37, **KB_COMMON, **extra)
        budget = mine_b3_hierarchical(q, mapped, memory_budget=knn_working_set(260, 12, 64, "fp32"),
                                      **KB_COMMON, **extra)  # fmt: skip
        for plan in (blocked, budget):
            np.testing.assert_array_equal(plan.clusters, whole.clusters)
            np.testing.assert_array_equal(plan.remainder, whole.remainder)
        # Every shard's kNN ran with the blocks (an option dropped on the way records none).
        sizes = [shard["size"] for shard in blocked.stats["shards"]]
        assert [(s["key_block_size"], s["key_blocks"]) for s in blocked.stats["shards"]] == [
            (37, -(-size // 37)) for size in sizes
        ]
        assert [s["key_block_size"] for s in budget.stats["shards"]] == [min(260, size) for size in sizes]
        assert all("key_blocks" not in shard for shard in whole.stats["shards"])
        assert blocked.params["key_block_size"] == 37


BAD_KEY_BLOCKS = bad_key_blocks("exact kNN", {"knn": "ivf"})


@pytest.mark.parametrize("case", sorted(BAD_KEY_BLOCKS))
def test_bad_key_block_options_fail_before_any_shard_is_cut_or_mined(monkeypatch, case):
    from hardbatch.mining import distributed, hierarchical

    def never(*args, **kwargs):
        raise AssertionError("shards cut or mined before the options were checked")

    monkeypatch.setattr(hierarchical, "coarse_shards", never)
    monkeypatch.setattr(hierarchical.HierarchicalRun, "mine", never)
    q, p, _ = _data(600)
    bad, message = BAD_KEY_BLOCKS[case]
    with pytest.raises(ConfigError, match=message):
        mine_b3_hierarchical(q, p, **KB_COMMON, **bad)
    with pytest.raises(ConfigError, match=message):  # no process group: the one-process run
        distributed.mine_b3_hierarchical_distributed(q, p, **KB_COMMON, **bad)


def test_a_budget_is_checked_against_the_largest_shard_that_is_mined():
    from hardbatch.graph.knn import knn_working_set
    from hardbatch.mining.hierarchical import HierarchicalRun

    fits_150 = knn_working_set(150, 12, 64, "fp32")  # the shards of 150 fit whole; 256 keys would not
    options = {**KB_COMMON, "shard_size": 150, "memory_budget": fits_150}
    HierarchicalRun.of(600, options, dim=12)
    with pytest.raises(ConfigError, match="too small"):
        HierarchicalRun.of(600, {**options, "shard_size": 300}, dim=12)
    with pytest.raises(ConfigError, match="too small"):  # the d it will run with counts
        HierarchicalRun.of(600, options, dim=64)


def _reference_window(q, p, rows, keys, start, width):
    """Float64 exact ranks [start, start + width) of each row over the positives ``keys``, own one left out."""
    qn = q[rows].astype(np.float64)
    qn /= np.linalg.norm(qn, axis=1, keepdims=True)
    pn = p[keys].astype(np.float64)
    pn /= np.linalg.norm(pn, axis=1, keepdims=True)
    windows = []
    for row, scores in zip(rows, qn @ pn.T):
        order = [int(keys[j]) for j in np.argsort(-scores, kind="stable") if keys[j] != row]
        windows.append(order[start : start + width])
    return windows


def test_coarse_window_recall_matches_a_float64_reference():
    from hardbatch.mining.b3 import effective_window
    from hardbatch.mining.hierarchical import HierarchicalRun, coarse_window_recall

    q, p, _ = _data(n=700)
    codes = np.where(np.arange(700) < 430, 0, 1).astype(np.int32)
    sources = np.where(codes == 0, "a", "b")
    run = HierarchicalRun.of(700, dict(batch_size=20, cluster_size=10, shard_size=150, sources=sources,
                                       skip={"a": 3, "b": 1}, window=12, device="cpu"))  # fmt: skip
    shards = run.shards(q, p)
    spans = [effective_window(3, 12, True), effective_window(1, 12, True)]
    # One shard too small to mine: its examples keep no window (recall 0 for them).
    minable = [len(s.ids) > 20 for s in shards[:-1]] + [False]
    got = coarse_window_recall(q, p, shards, codes, spans, minable=minable, sample=10_000, device="cpu",
                               key_block=37)  # fmt: skip
    recalls, coverages = [], []
    for shard, mined in zip(shards, minable):
        start, width = spans[shard.code]
        group = np.flatnonzero(codes == shard.code)
        flat = _reference_window(q, p, shard.ids, group, start, width)
        local = (
            _reference_window(q, p, shard.ids, shard.ids, start, width) if mined else [[]] * len(shard.ids)
        )
        for f, s in zip(flat, local):
            recalls.append(len(set(f) & set(s)) / len(f))
            coverages.append(len(set(f) & set(shard.ids.tolist())) / len(f))
    assert got["sample"] == 700
    assert got["window_recall"] == pytest.approx(np.mean(recalls), abs=1e-12)
    assert got["shard_coverage"] == pytest.approx(np.mean(coverages), abs=1e-12)
    assert got["window_recall"] < got["shard_coverage"] < 1.0


def test_hierarchical_plan_records_its_coarse_window_recall():
    q, p, _ = _data(n=600)
    options = dict(batch_size=20, cluster_size=10, skip=2, window=10, device="cpu", show_progress=False)
    whole = mine_b3_hierarchical(q, p, shard_size=600, **options)
    assert whole.params["hierarchical"]["shards"] == 1
    assert whole.stats["coarse_window_recall"] == {"window_recall": 1.0, "shard_coverage": 1.0, "sample": 256}
    cut = mine_b3_hierarchical(q, p, shard_size=200, coarse_recall_sample=50, **options)
    recall = cut.stats["coarse_window_recall"]
    assert recall["sample"] == 50 and 0.0 < recall["window_recall"] <= recall["shard_coverage"] < 1.0
    unmeasured = mine_b3_hierarchical(q, p, shard_size=200, coarse_recall_sample=0, **options)
    assert "coarse_window_recall" not in unmeasured.stats
    np.testing.assert_array_equal(unmeasured.clusters, cut.clusters)  # a statistic only
    for bad in (-1, 2.5, True, "many"):
        with pytest.raises(ConfigError, match="coarse_recall_sample"):
            mine_b3_hierarchical(q, p, shard_size=200, coarse_recall_sample=bad, **options)
