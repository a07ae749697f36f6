from __future__ import annotations

import numpy as np
import pytest
import torch

from hardbatch.errors import ConfigError
from hardbatch.graph import ivf
from hardbatch.graph import knn as knn_module
from hardbatch.graph.ivf import knn_ivf, probe_ladder
from hardbatch.graph.knn import knn, knn_exact, recall_report


def _clustered(n=2000, d=16, topics=20, seed=0, grid=None):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(topics, d)) * 2.0
    topic = rng.integers(0, topics, n)
    rows, keys = (centres[topic] + rng.normal(size=(n, d)) for _ in range(2))
    if grid is not None:  # few distinct products: long runs of tied scores
        rows, keys = np.round(rows * grid) / grid, np.round(keys * grid) / grid
    return rows.astype(np.float32), keys.astype(np.float32)


def _reference(rows, keys, k, nprobe, lists, exclude_self, seed=0):
    """Top k of each row among the keys of its group's probed lists, float64, ties by ascending key id."""
    key_t = torch.from_numpy(keys)
    centroids = ivf._train_centroids(key_t, lists, seed)
    key_lists = ivf._Buckets(ivf._nearest(key_t, centroids, torch.device("cpu")), lists)
    groups = ivf._Groups.of_rows(rows, centroids, torch.device("cpu"), False)
    search_k = k + 1 if exclude_self else k
    out = np.empty((len(rows), k), dtype=np.int64)
    for row in range(len(rows)):
        candidates = key_lists.members(
            groups.probed(int(groups.assignment[row]), nprobe, key_lists, search_k)
        )
        if exclude_self:
            candidates = candidates[candidates != row]
        scores = keys[candidates].astype(np.float64) @ rows[row].astype(np.float64)
        out[row] = candidates[np.argsort(-scores, kind="stable")[:k]]
    return out


@pytest.mark.parametrize("exclude_self", [False, True])
def test_every_list_probed_is_the_exact_answer_with_ties(exclude_self, monkeypatch):
    monkeypatch.setattr(ivf, "_EXACT_ABOVE", 1.01)  # search group by group even when it covers every key
    rows, keys = _clustered(grid=2)
    exact = knn_exact(rows, keys, 12, exclude_self=exclude_self, device="cpu", precision="fp32")
    found = knn_ivf(rows, keys, 12, exclude_self=exclude_self, nlist=9, nprobe=9, show_progress=False)
    np.testing.assert_array_equal(found.indices, exact.indices)
    np.testing.assert_array_equal(found.scores, exact.scores)
    assert found.info["searched_fraction"] == 1.0 and found.info["nprobe"] == 9
    assert found.info["exact_fallback"] is False


def test_searching_most_keys_falls_back_to_the_exact_search():
    rows, keys = _clustered(n=1000, seed=6)
    found = knn_ivf(rows, keys, 8, exclude_self=True, nlist=10, nprobe=6, device="cpu", show_progress=False)
    assert found.info["exact_fallback"] is True and found.info["searched_fraction"] == 1.0
    exact = knn_exact(rows, keys, 8, exclude_self=True, device="cpu")
    np.testing.assert_array_equal(found.indices, exact.indices)
    few = knn_ivf(rows, keys, 8, exclude_self=True, nlist=10, nprobe=2, device="cpu", show_progress=False)
    assert few.info["exact_fallback"] is False and few.info["searched_fraction"] < 0.5


@pytest.mark.parametrize("grid", [None, 2])
def test_answer_is_exact_among_the_probed_lists(grid):
    rows, keys = _clustered(n=1500, grid=grid, seed=3)
    found = knn_ivf(rows, keys, 10, exclude_self=True, nlist=25, nprobe=3, device="cpu", show_progress=False)
    expected = _reference(rows, keys, 10, 3, 25, exclude_self=True)
    if grid is None:  # distinct scores: the very same ranking
        np.testing.assert_array_equal(found.indices, expected)
    else:  # exact products in fp32 too: ties resolved by the same rule
        np.testing.assert_array_equal(found.indices, expected)
    assert not (found.indices == np.arange(len(rows))[:, None]).any()
    true = (rows[:, None, :] * keys[found.indices]).sum(-1)
    np.testing.assert_allclose(found.scores, true, rtol=1e-5, atol=1e-5)
    assert 0.0 < found.info["searched_fraction"] < 0.5


def test_bf16_groups_give_the_fp32_answer(monkeypatch):
    rows, keys = _clustered(n=4000, d=32, topics=8, seed=1)
    calls = []
    monkeypatch.setattr(ivf, "_BF16_MIN_WIDTH", 1)  # ~1,000 candidates per group: take the bf16 path anyway
    monkeypatch.setattr(
        ivf, "_bf16_topk", lambda *a, **kw: calls.append(1) or knn_module._bf16_topk(*a, **kw)
    )
    common = dict(exclude_self=True, nlist=8, nprobe=2, device="cpu", show_progress=False)
    fp32 = knn_ivf(rows, keys, 5, precision="fp32", **common)
    assert not calls and not fp32.info["exact_fallback"]  # the grouped search ran (under half the products)
    bf16 = knn_ivf(rows, keys, 5, precision="bf16", **common)
    assert bf16.info["precision"] == "bf16" and calls
    np.testing.assert_array_equal(bf16.indices, fp32.indices)
    np.testing.assert_allclose(bf16.scores, fp32.scores, rtol=1e-6)  # re-scored by another sum order


def test_bf16_answer_does_not_depend_on_the_rows_per_block(monkeypatch):
    rows, keys = _clustered(n=3000, d=32, topics=6, seed=4, grid=4)  # tied scores across bf16 margins
    monkeypatch.setattr(ivf, "_BF16_MIN_WIDTH", 1)
    common = dict(exclude_self=True, nlist=6, nprobe=2, device="cpu", precision="bf16", show_progress=False)
    whole = knn_ivf(rows, keys, 7, **common)
    monkeypatch.setattr(ivf, "_BF16_BLOCK_ENTRIES", 1)  # 16 rows per block: every group cut into many
    cut = knn_ivf(rows, keys, 7, **common)
    assert not whole.info["exact_fallback"]
    np.testing.assert_array_equal(cut.indices, whole.indices)
    np.testing.assert_array_equal(cut.scores, whole.scores)


# pool 1: the minimum pool, 4·(k+1) keys; with 3,000 topics (no structure) most rows then have fewer than
# k of their pool in the probed lists and take the re-scoring against the probed keys instead.
@pytest.mark.parametrize(("pool", "topics"), [(None, 60), (1, 3000)])
def test_calibration_reports_the_recall_the_search_reaches_on_its_sample(pool, topics, monkeypatch):
    monkeypatch.setattr(ivf, "_EXACT_ABOVE", 1.01)  # calibrate the grouped search all the way, no shortcut
    if pool is not None:
        monkeypatch.setattr(ivf, "_CALIBRATION_POOL", pool)
    rows, keys = _clustered(n=3000, d=24, topics=topics, seed=2)
    found = knn_ivf(
        rows, keys, 40, exclude_self=True, nlist=60, recall_target=0.9, recall_columns=(10, 40),
        calibration_sample=200, device="cpu", show_progress=False,
    )  # fmt: skip
    trace = found.info["calibration"]
    values = [value for value, _ in trace]
    assert values == probe_ladder(60)[: len(trace)]
    assert trace[-1][1] >= 0.9 and all(recall < 0.9 for _, recall in trace[:-1])
    assert found.info["nprobe"] == trace[-1][0] and found.info["calibrated_recall"] == trace[-1][1]
    assert all(found.info[stage] >= 0 for stage in ("lists_s", "calibration_s", "search_s"))
    # Every step of the trace: a full search at that nprobe, checked on the calibration's own 200 rows
    # against exact search, reaches the recall the calibration reported.
    ids = np.sort(np.random.default_rng([0, 0xCA1]).permutation(len(rows))[:200])
    exact = knn_exact(rows[ids], keys, 41, device="cpu").indices
    exact = np.array([[j for j in line if j != i][:40] for i, line in zip(ids, exact)])
    for value, reported in trace:
        searched = knn_ivf(
            rows, keys, 40, exclude_self=True, nlist=60, nprobe=value, device="cpu", show_progress=False
        )
        window = searched.indices[ids, 10:40]
        recall = (window[:, :, None] == exact[:, None, 10:40]).any(axis=2).mean()
        assert recall == pytest.approx(reported, abs=1e-4), value
    if topics == 60:  # holds off the sample too
        report = recall_report(
            found, rows, keys, ranges={"w": (10, 40)}, sample=1000, exclude_self=True, seed=7
        )
        assert report["w"] >= 0.85


def test_calibration_stops_where_the_exact_search_is_cheaper():
    rows, keys = _clustered(n=800, d=16, topics=800, seed=4)  # no structure: only most lists reach 1.0
    found = knn_ivf(
        rows, keys, 30, exclude_self=True, nlist=16, recall_target=1.0, device="cpu", show_progress=False
    )
    trace = found.info["calibration"]
    assert all(recall < 1.0 for _, recall in trace) and found.info["calibrated_recall"] is None
    assert found.info["nprobe"] == probe_ladder(16)[len(trace)] and found.info["exact_fallback"] is True
    exact = knn_exact(rows, keys, 30, exclude_self=True, device="cpu", precision="fp32")
    np.testing.assert_array_equal(found.indices, exact.indices)


def test_a_search_budget_caps_the_calibration_and_says_the_target_was_missed():
    rows, keys = _clustered(n=2000, d=16, topics=2000, seed=8)  # no structure: 0.95 needs most lists
    free = knn_ivf(rows, keys, 20, exclude_self=True, nlist=40, device="cpu", show_progress=False)
    assert free.info["exact_fallback"] and free.info["recall_target_met"]
    with pytest.warns(UserWarning, match="below the target 0.95"):
        capped = knn_ivf(
            rows, keys, 20, exclude_self=True, nlist=40, max_searched_fraction=0.1, device="cpu",
            show_progress=False,
        )  # fmt: skip
    info = capped.info
    assert not info["exact_fallback"] and info["searched_fraction"] <= 0.1
    assert info["recall_target_met"] is False and info["calibrated_recall"] < 0.95
    assert info["nprobe"] == info["calibration"][-1][0]
    # The next ladder step would have searched more than the budget:
    ladder = probe_ladder(40)
    over = knn_ivf(
        rows, keys, 20, exclude_self=True, nlist=40, nprobe=ladder[ladder.index(info["nprobe"]) + 1],
        device="cpu", show_progress=False,
    )  # fmt: skip
    assert over.info["searched_fraction"] > 0.1
    with pytest.raises(ConfigError, match="max_searched_fraction"):
        knn_ivf(rows, keys, 5, max_searched_fraction=0.0)


def test_lists_double_only_while_their_kmeans_costs_a_sixth_of_the_search():
    # The measured cases (docs/b3.md): 1M lowdim needed 25.7 % of the products at 1,000 lists (6.4 % at
    # 2,000); 200k needed 3.6 % at 447 lists, where 894 lists' k-means would cost more than it saves.
    n = 1_000_000
    assert ivf.more_lists(1000, n, n, int(0.257 * n * n)) == 2000
    assert ivf.more_lists(2000, n, n, int(0.064 * n * n)) is None
    assert ivf.more_lists(447, 200_000, 200_000, int(0.036 * 200_000**2)) is None
    # The threshold itself: k-means 20 · 256 · 2L · 2L + assignment (N_rows + N_keys) · 2L products.
    cost = 20 * 256 * 2000 * 2000 + 2 * n * 2000
    assert ivf.more_lists(1000, n, n, 6 * cost + 6) == 2000
    assert ivf.more_lists(1000, n, n, 6 * cost - 6) is None
    assert ivf.more_lists(1000, 77_000, 77_000, 10**12) is None  # 2,000 lists of 38 keys: too few


def test_default_lists_double_where_the_search_dominates(monkeypatch):
    rows, keys = _clustered(n=8000, d=24, topics=400, seed=3)
    options = dict(exclude_self=True, recall_target=0.9, recall_columns=(10, 30), device="cpu",
                   show_progress=False)  # fmt: skip
    plain = knn_ivf(rows, keys, 30, **options)  # at 8k, 178 lists' k-means costs more than the search
    assert plain.info["nlist"] == ivf.auto_lists(8000) == 89 and len(plain.info["nlist_tries"]) == 1
    monkeypatch.setattr(ivf, "_MORE_LISTS_BELOW", 1e9)  # the rule as if the search cost far more
    doubled = knn_ivf(rows, keys, 30, **options)
    first, second = doubled.info["nlist_tries"]
    assert (first["nlist"], second["nlist"]) == (89, 178) and doubled.info["nlist"] == 178
    assert first["searched_fraction"] > 0.5 > second["searched_fraction"]  # 89 lists: the exact search
    assert not doubled.info["exact_fallback"] and doubled.info["calibrated_recall"] >= 0.9
    assert (
        doubled.info["nprobe"] == second["nprobe"] and doubled.info["calibration"][-1][0] == second["nprobe"]
    )
    assert doubled.info["lists_s"] >= first["lists_s"] + second["lists_s"]
    assert doubled.info["calibration_s"] == pytest.approx(first["calibration_s"] + second["calibration_s"])
    # The kept layout is the one an explicit nlist gives: the same answer, bit for bit.
    explicit = knn_ivf(
        rows,
        keys,
        30,
        exclude_self=True,
        nlist=178,
        nprobe=second["nprobe"],
        device="cpu",
        show_progress=False,
    )
    np.testing.assert_array_equal(doubled.indices, explicit.indices)
    np.testing.assert_array_equal(doubled.scores, explicit.scores)
    assert "nlist_tries" not in explicit.info  # an explicit nlist is never changed


def test_doubled_lists_that_do_not_pay_are_dropped(monkeypatch):
    monkeypatch.setattr(ivf, "_MORE_LISTS_BELOW", 1e9)
    rows, keys = _clustered(n=8000, d=16, topics=8000, seed=3)  # no structure: both need the exact search
    found = knn_ivf(rows, keys, 30, exclude_self=True, recall_target=0.9, device="cpu", show_progress=False)
    assert [step["nlist"] for step in found.info["nlist_tries"]] == [89, 178]
    assert found.info["nlist"] == 89 and found.info["exact_fallback"]
    exact = knn_exact(rows, keys, 30, exclude_self=True, device="cpu", precision=found.info["precision"])
    np.testing.assert_array_equal(found.indices, exact.indices)


def test_small_lists_are_widened_to_hold_k_candidates():
    rows, keys = _clustered(n=400, d=8, topics=40, seed=5)
    found = knn_ivf(rows, keys, 60, exclude_self=True, nlist=10, nprobe=1, device="cpu", show_progress=False)
    assert (found.indices >= 0).all()
    assert all(len(set(line)) == 60 for line in found.indices.tolist())


def test_knn_dispatch_and_errors():
    rows, keys = _clustered(n=300, d=8)
    result = knn(rows, keys, 5, backend="ivf_torch", nlist=4, nprobe=4, device="cpu", show_progress=False)
    np.testing.assert_array_equal(result.indices, knn_exact(rows, keys, 5, device="cpu").indices)
    assert result.info["index"] == "ivf_torch"
    with pytest.raises(ConfigError, match="nlist must be a positive integer"):
        knn_ivf(rows, keys, 5, nlist=0)
    with pytest.raises(ConfigError, match="nprobe must be a positive integer"):
        knn_ivf(rows, keys, 5, nprobe=-1)
    with pytest.raises(ConfigError, match="recall_target"):
        knn_ivf(rows, keys, 5, recall_target=1.5)
    with pytest.raises(ConfigError, match="aligned"):
        knn_ivf(rows[:10], keys, 5, exclude_self=True)
    with pytest.raises(ConfigError, match="neighbours requested"):
        knn_ivf(rows, keys, 400)


def test_probe_ladder_steps_by_root_two_and_ends_at_every_list():
    assert probe_ladder(1) == [1]
    assert probe_ladder(1000)[:9] == [1, 2, 3, 4, 6, 8, 11, 16, 23]
    assert probe_ladder(1000)[-1] == 1000 and probe_ladder(1000)[-2] == 724
