from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from hardbatch.errors import ConfigError, DataError, StaleCacheError
from hardbatch.mining import BatchPlan, mine_b3


def random_plan(
    clusters: int, k: int, remainder: int, sources: int = 0, seed: int = 0, batch: int | None = None
):
    rng = np.random.default_rng(seed)
    n = clusters * k + remainder
    order = rng.permutation(n)
    params = {"cluster_size": k, "batch_size": batch or k, "seed": seed}
    kwargs = {}
    if sources:
        kwargs = {
            "cluster_sources": rng.integers(0, sources, clusters),
            "remainder_sources": rng.integers(0, sources, remainder),
            "source_names": [f"s{i}" for i in range(sources)],
        }
    return BatchPlan(order[: clusters * k].reshape(clusters, k), order[clusters * k :], n, params, **kwargs)


@given(
    clusters=st.integers(1, 30),
    k=st.integers(1, 6),
    remainder_frac=st.floats(0, 0.99),
    per_batch=st.integers(1, 5),
    sources=st.integers(0, 3),
    same_source=st.booleans(),
    epoch=st.integers(0, 1000),
    seed=st.integers(0, 1000),
)
def test_batch_properties(clusters, k, remainder_frac, per_batch, sources, same_source, epoch, seed):
    remainder = int(remainder_frac * k)
    plan = random_plan(clusters, k, remainder, sources, seed)
    size = per_batch * k
    if size > plan.num_examples:
        with pytest.raises(ConfigError, match="larger than the data"):
            plan.batches(epoch, batch_size=size)
        return
    cluster_of = plan.labels()
    for drop_last in (True, False):
        batches = plan.batches(epoch, batch_size=size, drop_last=drop_last, same_source=same_source)
        assert len(batches) == plan.num_batches(batch_size=size, drop_last=drop_last, same_source=same_source)
        flat = [i for b in batches for i in b]
        assert len(flat) == len(set(flat))
        if drop_last:
            assert all(len(b) == size for b in batches)
            # Full batches are made of whole clusters; what is left out is whole clusters + the remainder.
            for b in batches:
                assert all(np.isin(plan.clusters[cluster_of[i]], b).all() for i in b)
            assert set(plan.remainder.tolist()).isdisjoint(flat)
            if same_source and sources:
                codes = plan.example_sources()
                assert all(np.unique(codes[b]).size == 1 for b in batches)
        else:
            assert sorted(flat) == list(range(plan.num_examples))
            assert all(len(b) == size for b in batches[:-1]) and 0 < len(batches[-1]) <= size
        assert batches == plan.batches(epoch, batch_size=size, drop_last=drop_last, same_source=same_source)


def test_epochs_differ_and_seed_matters():
    plan = random_plan(40, 4, 3, batch=16)
    assert plan.batches(0) != plan.batches(1)
    assert plan.batches(0) != plan.batches(0, seed=99)
    rng_batches = plan.batches(5, rng=np.random.default_rng(7))
    assert rng_batches == plan.batches(9, rng=np.random.default_rng(7))


def test_batch_size_must_be_a_multiple_of_k():
    plan = random_plan(10, 4, 0)
    with pytest.raises(ConfigError, match="multiple of the plan's cluster_size=4"):
        plan.batches(0, batch_size=6)


def test_constructor_rejects_duplicates_and_drops():
    with pytest.raises(DataError, match="exactly once"):
        BatchPlan(np.array([[0, 1], [1, 2]]), np.array([], dtype=np.int64), 4, {"cluster_size": 2})
    with pytest.raises(DataError, match="exactly once"):
        BatchPlan(np.array([[0, 1]]), np.array([], dtype=np.int64), 3, {"cluster_size": 2})


def _mined_plan():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 16))
    q = (np.repeat(centers, 8, axis=0) + 0.2 * rng.normal(size=(80, 16))).astype(np.float32)
    p = (np.repeat(centers, 8, axis=0) + 0.2 * rng.normal(size=(80, 16))).astype(np.float32)
    sources = ["web"] * 40 + ["code"] * 40
    return mine_b3(
        q, p, batch_size=16, cluster_size=8, skip=1, window=10, sources=sources, dataset_hash="abc"
    ), q


def test_save_load_round_trip(tmp_path):
    plan, _ = _mined_plan()
    path = plan.save(tmp_path / "sub" / "plan.parquet")
    assert [p.name for p in path.parent.iterdir()] == ["plan.parquet"]  # no temporary file left behind
    loaded = BatchPlan.load(path, expected_num_examples=80, expected_hash="abc")
    assert loaded.fingerprint == plan.fingerprint
    np.testing.assert_array_equal(loaded.clusters, plan.clusters)
    np.testing.assert_array_equal(loaded.remainder, plan.remainder)
    np.testing.assert_array_equal(loaded.example_sources(), plan.example_sources())
    assert (
        loaded.source_names == ["code", "web"]
        and loaded.params == plan.params
        and loaded.hashes == plan.hashes
    )
    assert loaded.stats["graph"] == plan.stats["graph"]
    assert (loaded.neighbors != plan.neighbors).nnz == 0 and (loaded.window != plan.window).nnz == 0
    for epoch in range(3):
        assert loaded.batches(epoch) == plan.batches(epoch)
        assert loaded.batches(epoch, drop_last=False) == plan.batches(epoch, drop_last=False)
    # The file is ordinary Parquet: one row per example with its cluster id.
    table = pq.read_table(path)
    assert table.num_rows == 80 and {"cluster", "source", "neighbors", "window"} <= set(table.column_names)


def test_plain_plan_round_trip_without_graphs(tmp_path):
    plan = random_plan(5, 3, 2)
    loaded = BatchPlan.load(plan.save(tmp_path / "p.parquet"))
    assert loaded.fingerprint == plan.fingerprint and loaded.window is None and not loaded.has_sources


def test_stale_plans_are_detected(tmp_path):
    plan, query = _mined_plan()
    path = plan.save(tmp_path / "plan.parquet")
    from hardbatch.io import hash_array

    BatchPlan.load(path, expected_hash=hash_array(query))
    BatchPlan.load(path, expected_hash={"query_emb": hash_array(query), "dataset": "abc"})
    with pytest.raises(StaleCacheError, match="mined for 80 examples but the data has 81"):
        BatchPlan.load(path, expected_num_examples=81)
    with pytest.raises(StaleCacheError, match="different inputs"):
        BatchPlan.load(path, expected_hash=hash_array(query + 1))
    with pytest.raises(StaleCacheError, match="dataset hash"):
        plan.check_matches(expected_hash={"dataset": "xyz"})
    with pytest.raises(StaleCacheError, match="records no 'labels' hash"):
        plan.check_matches(expected_hash={"labels": "xyz"})


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match=r"missing\.parquet: batch plan not found"):
        BatchPlan.load(tmp_path / "missing.parquet")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_text("not parquet")
    with pytest.raises(DataError, match="not a readable Parquet"):
        BatchPlan.load(garbage)
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), other)
    with pytest.raises(DataError, match="no hardbatch plan metadata"):
        BatchPlan.load(other)


def test_hard_negatives_follow_window_counts():
    # Window: members 0 and 1 both point at 5; member 0 also at 6; 7 is pointed at by nobody.
    n = 8
    rows, cols = [0, 0, 1, 1, 2], [5, 6, 5, 0, 7]
    window = sp.csr_array((np.ones(5, dtype=np.int8), (rows, cols)), shape=(n, n))
    plan = BatchPlan(
        np.arange(8).reshape(4, 2), np.array([], dtype=np.int64), n, {"cluster_size": 2}, window=window
    )
    assert sorted(plan.hard_negatives([0, 1], 2)) == [5, 6]  # member 0 of the batch itself is excluded
    assert plan.hard_negatives([0, 1], 2, epoch=3) == plan.hard_negatives([1, 0], 2, epoch=3)
    draws = [plan.hard_negatives([0, 1], 1, epoch=e)[0] for e in range(300)]
    assert 0.55 < draws.count(5) / 300 < 0.8  # probability 2/3 for 5, 1/3 for 6
    filled = plan.hard_negatives([0, 1], 4)
    assert len(set(filled)) == 4 and {5, 6} <= set(filled) and not {0, 1} & set(filled)
    with pytest.raises(ConfigError, match="outside the batch"):
        plan.hard_negatives([0, 1], 7)
    with pytest.raises(ConfigError, match="store_window"):
        random_plan(4, 2, 0).hard_negatives([0, 1], 1)
