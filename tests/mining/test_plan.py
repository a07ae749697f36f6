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


def _csr(n, pairs):
    rows, cols = zip(*pairs) if pairs else ((), ())
    return sp.csr_array((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))


def _exclusion_plan():
    # 40 examples. Batch {0, 1}: both windows point heavily at 10..13 and lightly at 20..39; 10 and 11 are
    # in member 1's top-p (its likely false negatives), 12 in member 0's. A member-only exclusion would
    # draw 10-12 most often (weight 2 each).
    n = 40
    window = [(0, j) for j in (10, 11, 12, 13, *range(20, 40))] + [(1, j) for j in (10, 11, 12, 13)]
    skipped = [(1, 10), (1, 11), (0, 12), (5, 13)]  # (5, 13): not a batch member's, so 13 stays allowed
    plan = BatchPlan(
        np.arange(n).reshape(20, 2), np.zeros(0, dtype=np.int64), n, {"cluster_size": 2, "skip": 2},
        window=_csr(n, window), skipped=_csr(n, skipped),
    )  # fmt: skip
    return plan


def test_hard_negatives_exclude_every_members_top_p_and_change_with_the_epoch():
    plan = _exclusion_plan()
    assert plan.excluded_negatives([0, 1]).tolist() == [0, 1, 10, 11, 12]
    draws = [plan.hard_negatives([0, 1], 4, epoch=e) for e in range(200)]
    flat = np.concatenate(draws)
    assert not set(flat.tolist()) & {0, 1, 10, 11, 12}
    assert all(len(set(d)) == 4 for d in draws)
    # 13 has weight 2 of a total 2 + 20: it is drawn about twice as often as a weight-1 item.
    counts = np.bincount(flat, minlength=40)
    assert counts[13] > 1.5 * counts[20:].mean()  # inclusion about 0.33 vs 0.18
    assert len({tuple(d) for d in draws}) > 150  # the epoch changes the draw
    # More than the window holds: the fill never uses an excluded id either.
    for epoch in range(20):
        filled = plan.hard_negatives([0, 1], 30, epoch=epoch)
        assert len(set(filled)) == 30 and not set(filled) & {0, 1, 10, 11, 12}
    with pytest.raises(ConfigError, match="top-skip ranks"):
        plan.hard_negatives([0, 1], 36)


def test_skipped_survives_save_and_load(tmp_path):
    plan = _exclusion_plan()
    loaded = BatchPlan.load(plan.save(tmp_path / "p.parquet"))
    assert (loaded.skipped != plan.skipped).nnz == 0
    assert loaded.hard_negatives([0, 1], 4, epoch=7) == plan.hard_negatives([0, 1], 4, epoch=7)


def test_plans_without_skipped_warn_and_exclude_members_only():
    plan = _exclusion_plan()
    old = BatchPlan(plan.clusters, plan.remainder, plan.num_examples, plan.params, window=plan.window)
    with pytest.warns(UserWarning, match="no top-skip ranks"):
        old.hard_negatives([0, 1], 4)


def test_per_query_negatives_come_from_each_members_own_window():
    n = 60
    # Member 0's window is 10..19, member 1's 20..29, member 2's 30..39; 15 is member 2's likely false
    # negative, 21 is member 1's own window item but also in member 0's top-p.
    window = (
        [(0, j) for j in range(10, 20)] + [(1, j) for j in range(20, 30)] + [(2, j) for j in range(30, 40)]
    )
    plan = BatchPlan(
        np.arange(n).reshape(30, 2), np.zeros(0, dtype=np.int64), n, {"cluster_size": 2, "skip": 1},
        window=_csr(n, window), skipped=_csr(n, [(2, 15), (0, 21)]),
    )  # fmt: skip
    for epoch in range(30):
        ids = plan.per_query_negatives([2, 0, 1], 3, epoch=epoch)
        assert len(ids) == 9 and len(set(ids)) == 9
        assert set(ids[0:3]) <= set(range(30, 40))  # query-major, in batch order
        assert set(ids[3:6]) <= set(range(10, 20)) - {15}
        assert set(ids[6:9]) <= set(range(20, 30)) - {21}
    assert plan.per_query_negatives([2, 0, 1], 3, epoch=0) != plan.per_query_negatives([2, 0, 1], 3, epoch=1)
    # A window with too few items is topped up with other allowed examples.
    ids = plan.per_query_negatives([0], 12, epoch=0)
    assert set(ids[:10]) == set(range(10, 20))  # 15 is allowed now: member 2 is not in this batch
    assert len(set(ids)) == 12 and 0 not in ids and 21 not in ids
