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


@pytest.mark.parametrize(
    ("count_self", "skip_twin", "keep_twin"),
    [(True, 2, 1), (False, 1, 0)],  # paper count: the example itself is rank 0, its twin rank 1
)
def test_skip_drops_the_top_ranks(count_self, skip_twin, keep_twin):
    query, positive, labels = planted(groups=10, size=8)
    partner = twin_of(len(labels))
    options = {"batch_size": 8, "cluster_size": 8, "device": "cpu", "count_self": count_self}
    with_skip = mine_b3(query, positive, skip=skip_twin, window=6, **options)
    no_skip = mine_b3(query, positive, skip=keep_twin, window=7, **options)
    rows = np.arange(len(labels))
    assert not with_skip.window[rows, partner].any()  # the twin is everyone's nearest other: skipped
    assert with_skip.skipped[rows, partner].all()  # ... and recorded as a likely false negative
    assert with_skip.skipped.sum(axis=1).tolist() == [1] * len(labels)
    assert no_skip.window[rows, partner].all()
    assert no_skip.skipped.nnz == 0
    assert with_skip.stats["graph"]["mutual_edges"] == 10 * (28 - 4)  # per group: 8-clique minus 4 twin pairs
    assert with_skip.params["count_self"] is count_self


def test_paper_count_with_skip_zero_keeps_one_rank_less():
    # [0, m) in the paper's ranking contains the example itself: m - 1 others remain.
    query, positive, _ = planted(groups=10, size=8)
    plan = mine_b3(query, positive, batch_size=8, cluster_size=8, skip=0, window=4, device="cpu")
    assert plan.window.sum(axis=1).tolist() == [3] * len(query)


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
        # Every dropped window candidate is recorded as a likely false negative (B3++ never uses it).
        assert (plan.skipped != base.window).nnz == 0
    assert base.skipped.nnz == 0


def test_hnsw_backend_reports_recall_and_matches_exact_clusters():
    query, positive, labels = planted(groups=12, size=8)
    plan = mine_b3(query, positive, batch_size=16, cluster_size=8, skip=0, window=7, knn="hnsw", device="cpu")
    assert plan.stats["knn_recall"] > 0.95
    assert all(np.unique(labels[c]).size == 1 for c in plan.clusters)


def test_ivf_torch_backend_calibrates_reports_recall_and_probing_everything_is_the_exact_plan():
    pytest.importorskip("faiss")
    query, positive, _ = planted(groups=24, size=8, seed=3)
    common = dict(batch_size=16, cluster_size=8, skip=2, window=10, device="cpu", seed=1)
    exact = mine_b3(query, positive, **common)
    everything = mine_b3(query, positive, knn="ivf_torch", faiss_options={"nlist": 6, "nprobe": 6}, **common)
    assert everything.stats["knn_window_recall"] == 1.0 and everything.stats["knn_info"]["nprobe"] == 6
    np.testing.assert_array_equal(everything.clusters, exact.clusters)
    calibrated = mine_b3(
        query, positive, knn="ivf_torch", faiss_options={"nlist": 6}, recall_target=0.9, **common
    )
    info = calibrated.stats["knn_info"]
    assert info["index"] == "ivf_torch"
    assert info["exact_fallback"] or info["calibrated_recall"] >= 0.9
    assert calibrated.stats["knn_window_recall"] >= 0.8
    assert calibrated.params["knn"] == "ivf_torch"


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
    with pytest.warns(UserWarning, match=r"has no edges \(skip=500, window=10"):
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


def test_skip_and_window_per_source():
    query, positive, labels = planted(groups=10, size=8)
    partner = twin_of(len(labels))
    q2, p2 = np.concatenate([query, query]), np.concatenate([positive, positive])
    sources = ["web"] * len(query) + ["vqa"] * len(query)
    options = {"batch_size": 8, "cluster_size": 8, "device": "cpu", "sources": sources}
    plan = mine_b3(q2, p2, skip={"vqa": 2, "*": 1}, window={"web": 7, "vqa": 6}, **options)
    n, rows = len(query), np.arange(len(query))
    assert plan.window[rows, partner].all()  # web: p=1 skips only the example itself
    assert not plan.window[n + rows, n + partner].any()  # vqa: p=2 also skips the twin
    assert plan.skipped[n + rows, n + partner].all() and plan.skipped[:n].nnz == 0
    assert plan.params["skip"] == {"vqa": 2, "web": 1} and plan.params["window"] == {"vqa": 6, "web": 7}
    same = mine_b3(q2, p2, skip={"*": 1}, window=7, **options)
    assert same.params["skip"] == 1
    with pytest.raises(ConfigError, match="no source named qa"):
        mine_b3(q2, p2, skip={"qa": 2, "*": 1}, **options)
    with pytest.raises(ConfigError, match="missing web"):
        mine_b3(q2, p2, skip={"vqa": 2}, **options)
    with pytest.raises(ConfigError, match="skip must be an integer >= 0"):
        mine_b3(q2, p2, skip={"vqa": -1, "*": 1}, **options)
    with pytest.raises(ConfigError, match=r"no source named vqa \(sources: none\)"):
        mine_b3(query, positive, batch_size=8, cluster_size=8, skip={"vqa": 2})
    assert mine_b3(query, positive, batch_size=8, cluster_size=8, skip={"*": 2}).params["skip"] == 2


def _label_data(pairs: int = 6, per_label: int = 8, dim: int = 32, seed: int = 0):
    """Classification data: 2·pairs labels; labels 2t and 2t+1 are close (each other's top non-gold label).

    Positives are the label texts (and the label's embedding); queries lie near their own label.
    """
    rng = np.random.default_rng(seed)
    pair_centers = rng.normal(size=(pairs, dim))
    label_emb = np.repeat(pair_centers, 2, axis=0) + 0.4 * rng.normal(size=(2 * pairs, dim))
    labels = rng.permutation(np.repeat(np.arange(2 * pairs), per_label))
    query = label_emb[labels] + 0.1 * rng.normal(size=(labels.size, dim))
    positive = label_emb[labels]
    return query.astype(np.float32), positive.astype(np.float32), labels


def test_classification_sources_use_the_label_graph():
    query, positive, labels = _label_data()
    texts = [f"class {label}" for label in labels]
    plan = mine_b3(
        query, positive, batch_size=16, cluster_size=16, positive_texts=texts, classification=True,
        label_fraction=1 / 12, window=3, device="cpu",
    )  # fmt: skip
    rows, cols = plan.neighbors.nonzero()
    # Edges only between the two labels of a pair, never between examples of the same (gold) label.
    assert rows.size == 6 * 2 * 8 * 8
    assert (labels[rows] != labels[cols]).all() and (labels[rows] // 2 == labels[cols] // 2).all()
    # Each cluster of 16 is one label pair (both labels, 8 examples each).
    assert all(np.unique(labels[c] // 2).size == 1 and np.unique(labels[c]).size == 2 for c in plan.clusters)
    # B3++ pool: the representative of the partner label; excluded: the representative of the own label.
    pool_rows, pool_cols = plan.window.nonzero()
    assert (labels[pool_cols] == (labels[pool_rows] ^ 1)).all() and np.bincount(pool_rows).max() == 1
    skip_rows, skip_cols = plan.skipped.nonzero()
    assert (labels[skip_cols] == labels[skip_rows]).all() and skip_rows.size == len(labels)
    with pytest.raises(ConfigError, match="positive_texts"):
        mine_b3(query, positive, batch_size=16, cluster_size=16, classification=True)


def test_classification_only_for_the_named_sources():
    query, positive, labels = _label_data()
    retrieval_q, retrieval_p, retrieval_labels = planted(groups=6, size=16)
    q = np.concatenate([query, retrieval_q])
    p = np.concatenate([positive, retrieval_p])
    sources = ["imagenet"] * len(query) + ["web"] * len(retrieval_q)
    texts = [f"class {label}" for label in labels] + [f"doc {i}" for i in range(len(retrieval_q))]
    plan = mine_b3(
        q, p, batch_size=16, cluster_size=16, sources=sources, positive_texts=texts, classification=["imagenet"],
        label_fraction=1 / 12, skip=1, window=15, device="cpu",
    )  # fmt: skip
    n = len(query)
    web = [c for c in plan.clusters if c[0] >= n]
    assert len(web) == 6 and all(np.unique(retrieval_labels[c - n]).size == 1 for c in web)
    assert plan.params["classification"] == ["imagenet"]
    with pytest.raises(ConfigError, match="classification: no source named cifar"):
        mine_b3(
            q,
            p,
            batch_size=16,
            cluster_size=16,
            sources=sources,
            positive_texts=texts,
            classification=["cifar"],
        )


@pytest.mark.parametrize("community", ["leiden", "louvain"])
def test_community_methods_recover_planted_groups_with_exact_k(community):
    query, positive, labels = planted(groups=20, size=8, extra=3)
    plan = mine_b3(
        query, positive, batch_size=16, cluster_size=8, skip=1, window=7, community=community, device="cpu"
    )
    assert plan.num_clusters == 20 and plan.remainder.size == 3
    ids = np.concatenate([plan.clusters.reshape(-1), plan.remainder])
    assert np.array_equal(np.sort(ids), np.arange(len(labels)))  # no duplicate, nothing dropped
    assert all(np.unique(labels[c]).size == 1 for c in plan.clusters)
    assert plan.stats["partition"]["within_edge_fraction"] == 1.0 and plan.params["community"] == community
    with pytest.raises(ConfigError, match="unknown community"):
        mine_b3(query, positive, batch_size=16, cluster_size=8, community="spectral")


def test_cluster_hardness_is_the_same_in_any_block_size_and_blocks_stay_within_budget():
    from hardbatch.mining.b3 import HARDNESS_BLOCK_BYTES, hardness_chunk

    rng = np.random.default_rng(4)
    query, positive = rng.standard_normal((60, 5)), rng.standard_normal((60, 5))
    groups = rng.permutation(60).reshape(15, 4)
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    p = positive / np.linalg.norm(positive, axis=1, keepdims=True)
    naive = np.mean([q[i] @ p[j] for g in groups for i in g for j in g if i != j])
    for chunk in (1, 4, 15, None):
        assert cluster_hardness(query, positive, groups, chunk=chunk) == pytest.approx(naive, abs=1e-6)
    for size, dim in ((32, 384), (8, 1024), (1024, 64)):
        chunk = hardness_chunk(size, dim)
        assert chunk >= 1 and chunk * 4 * size * (4 * dim + size) <= HARDNESS_BLOCK_BYTES


def test_window_stage_does_not_copy_the_neighbours(monkeypatch):
    """The window stage held int64 copies of the kNN's neighbours and their concatenation: 3.5× the kNN
    output at 20k (~1 GB of the peak RSS at 1M); it now writes from views into the preallocated rows."""
    import contextlib
    import tracemalloc

    import hardbatch.progress as progress

    growth: dict[str, int] = {}
    stage = progress.StageTimer.stage

    @contextlib.contextmanager
    def traced(self, name):
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        with stage(self, name):
            yield
        growth[name] = tracemalloc.get_traced_memory()[1] - start

    monkeypatch.setattr(progress.StageTimer, "stage", traced)
    rng = np.random.default_rng(0)
    n, d = 6000, 16
    query = rng.standard_normal((n, d)).astype(np.float32)
    positive = (query + 0.5 * rng.standard_normal((n, d))).astype(np.float32)
    tracemalloc.start()
    try:
        mine_b3(query, positive, batch_size=64, cluster_size=32, skip=30, window=100, device="cpu")
    finally:
        tracemalloc.stop()
    knn_output = n * 130 * 8  # int32 ids and fp32 scores of ranks [0, p + m)
    assert growth["window"] < 0.05 * knn_output, growth
