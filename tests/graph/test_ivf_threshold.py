from __future__ import annotations

import numpy as np
import pytest
import torch

from hardbatch.errors import ConfigError
from hardbatch.graph import ivf
from hardbatch.graph import ivf_threshold as module
from hardbatch.graph.ivf import probe_ladder
from hardbatch.graph.ivf_threshold import ivf_torch_threshold_graph, threshold_groups, threshold_layout
from hardbatch.graph.threshold import DenseGraphError, threshold_graph


def _clustered(n=2000, d=16, topics=20, seed=0, grid=None, keys_n=None):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(topics, d)) * 2.0
    rows = centres[rng.integers(0, topics, n)] + rng.normal(size=(n, d))
    keys = centres[rng.integers(0, topics, keys_n or n)] + rng.normal(size=(keys_n or n, d))
    if keys_n is None:  # aligned: key i is row i's positive
        keys = rows + 0.3 * rng.normal(size=rows.shape)
    if grid is not None:  # few distinct products: many scores exactly at the threshold
        rows, keys = np.round(rows * grid) / grid, np.round(keys * grid) / grid
    return rows.astype(np.float32), keys.astype(np.float32)


def _top_score(rows, keys, fraction):
    """A threshold keeping about ``fraction`` of the inner products: a score the data really has on grid
    data (exact products, so ties), else the middle of the widest gap nearby (no rounding crosses it)."""
    scores = np.sort((rows.astype(np.float64) @ keys.T.astype(np.float64)).ravel())
    at = int((1 - fraction) * len(scores))
    window = scores[at - 200 : at + 200]
    if len(np.unique(window)) < len(window) / 2:
        return float(scores[at])
    widest = int(np.argmax(np.diff(window)))
    return float((window[widest] + window[widest + 1]) / 2)


def _reference(rows, keys, threshold, layout, drop_diagonal):
    """Every (row, key) with key in the row's group's probed lists and a float64 score above ``threshold``."""
    groups, key_lists = layout.buckets()
    dense = np.zeros((len(rows), len(keys)), dtype=bool)
    for row in range(len(rows)):
        lists = groups.probed(int(groups.assignment[row]), layout.nprobe, key_lists, 0)
        candidates = key_lists.members(lists)
        scores = keys[candidates].astype(np.float64) @ rows[row].astype(np.float64)
        dense[row, candidates[scores > threshold]] = True
    if drop_diagonal:
        np.fill_diagonal(dense, False)
    return dense


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("drop_diagonal", [False, True])
def test_every_list_probed_is_the_exact_graph_with_ties(precision, drop_diagonal, monkeypatch):
    monkeypatch.setattr(ivf, "_EXACT_ABOVE", 1.01)  # search group by group even when it covers every key
    monkeypatch.setattr(module, "_BF16_MIN_CANDIDATES", 1)
    rows, keys = _clustered(n=1203, grid=2, seed=1)  # grid products are exact: ties at the threshold
    threshold = _top_score(rows, keys, 0.01)
    assert ((rows @ keys.T) == threshold).sum() > 10
    exact = threshold_graph(rows, keys, threshold, device="cpu", normalize=False, drop_diagonal=drop_diagonal,
                            precision="fp32")  # fmt: skip
    graph, info = ivf_torch_threshold_graph(
        rows, keys, threshold, drop_diagonal=drop_diagonal, normalize=False, nlist=9, nprobe=9,
        precision=precision, device="cpu", show_progress=False,
    )  # fmt: skip
    assert info["exact_fallback"] is False and info["searched_fraction"] == 1.0
    assert (graph != exact).nnz == 0 and graph.has_sorted_indices
    np.testing.assert_array_equal(graph.indices, exact.indices)
    np.testing.assert_array_equal(graph.indptr, exact.indptr)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_graph_is_exact_among_the_probed_lists(precision, monkeypatch):
    monkeypatch.setattr(module, "_BF16_MIN_CANDIDATES", 1)
    rows, keys = _clustered(n=1501, d=12, seed=3, keys_n=977)  # rows and keys of other sizes
    threshold = _top_score(rows, keys, 0.02)
    layout, key_t = threshold_layout(rows, keys, threshold, nlist=25, nprobe=3, device="cpu")
    found, cols, counts = threshold_groups(rows, key_t, threshold, layout, precision=precision)
    assert counts["bf16_groups"] == (
        np.count_nonzero(np.bincount(layout.row_groups)) if precision == "bf16" else 0
    )
    dense = np.zeros((len(rows), len(keys)), dtype=bool)
    dense[found, cols] = True
    assert len(found) == dense.sum()  # no edge twice
    np.testing.assert_array_equal(dense, _reference(rows, keys, threshold, layout, False))
    groups, key_lists = layout.buckets()
    assert counts["products"] == groups.products(3, key_lists, 0).sum()
    graph, info = ivf_torch_threshold_graph(
        rows, keys, threshold, normalize=False, nlist=25, nprobe=3, precision=precision, device="cpu",
        show_progress=False,
    )  # fmt: skip
    np.testing.assert_array_equal(graph.toarray().astype(bool), dense)
    assert 0.0 < info["searched_fraction"] < 0.5


def test_groups_searched_apart_give_the_same_edges():
    rows, keys = _clustered(n=900, d=8, seed=5)
    threshold = _top_score(rows, keys, 0.02)
    layout, key_t = threshold_layout(rows, keys, threshold, nlist=12, nprobe=2, device="cpu")
    whole = module.edge_coordinates_to_csr(*threshold_groups(rows, key_t, threshold, layout)[:2], (900, 900))
    everyone = np.flatnonzero(np.bincount(layout.row_groups, minlength=12))
    parts = [threshold_groups(rows, key_t, threshold, layout, everyone[i::3]) for i in (2, 0, 1)]
    rows_idx = np.concatenate([part[0] for part in parts])
    cols_idx = np.concatenate([part[1] for part in parts])
    apart = module.edge_coordinates_to_csr(rows_idx, cols_idx, (900, 900))
    np.testing.assert_array_equal(apart.indptr, whole.indptr)
    np.testing.assert_array_equal(apart.indices, whole.indices)
    # bf16 asked for, but every group probes fewer keys than pay for it: fp32 blocks, the same edges.
    narrow_rows, narrow_cols, counts = threshold_groups(rows, key_t, threshold, layout, precision="bf16")
    assert counts["bf16_groups"] == 0
    narrow = module.edge_coordinates_to_csr(narrow_rows, narrow_cols, (900, 900))
    np.testing.assert_array_equal(narrow.indices, whole.indices)


def test_calibration_reports_the_edge_recall_of_its_sample(monkeypatch):
    monkeypatch.setattr(ivf, "_EXACT_ABOVE", 1.01)  # calibrate all the way
    rows, keys = _clustered(n=3000, d=24, topics=300, seed=2)
    threshold = _top_score(rows, keys, 0.004)
    graph, info = ivf_torch_threshold_graph(
        rows, keys, threshold, drop_diagonal=True, normalize=False, nlist=60, recall_target=0.9,
        calibration_sample=300, device="cpu", show_progress=False,
    )  # fmt: skip
    trace = info["calibration"]
    assert [value for value, _ in trace] == probe_ladder(60)[: len(trace)] and len(trace) > 1
    assert trace[-1][1] >= 0.9 and all(recall < 0.9 for _, recall in trace[:-1])
    assert info["nprobe"] == trace[-1][0] and info["calibrated_recall"] == trace[-1][1]
    assert all(info[stage] >= 0 for stage in ("lists_s", "calibration_s", "search_s"))
    exact = threshold_graph(rows, keys, threshold, device="cpu", normalize=False, drop_diagonal=True)
    ids = np.sort(np.random.default_rng([0, 0xED6]).permutation(len(rows))[:300])
    assert info["calibration_edges"] == exact[ids].nnz
    for value, reported in trace:  # every step: the full search at that nprobe, on the sample's rows
        searched, _ = ivf_torch_threshold_graph(
            rows, keys, threshold, drop_diagonal=True, normalize=False, nlist=60, nprobe=value,
            device="cpu", show_progress=False,
        )  # fmt: skip
        assert searched[ids].multiply(exact[ids]).nnz == searched[ids].nnz  # only true edges
        assert searched[ids].nnz / exact[ids].nnz == pytest.approx(reported, abs=1e-4), value
    assert graph.nnz / exact.nnz >= 0.85  # holds off the sample too


def test_searching_most_keys_falls_back_to_the_exact_graph():
    rows, keys = _clustered(n=800, d=16, topics=800, seed=4)  # no structure: recall 1.0 needs most lists
    threshold = _top_score(rows, keys, 0.01)
    graph, info = ivf_torch_threshold_graph(
        rows, keys, threshold, normalize=False, nlist=16, recall_target=1.0, device="cpu", show_progress=False
    )
    assert info["exact_fallback"] is True and info["searched_fraction"] == 1.0
    assert all(recall < 1.0 for _, recall in info["calibration"]) and info["calibrated_recall"] is None
    exact = threshold_graph(rows, keys, threshold, device="cpu", normalize=False)
    assert (graph != exact).nnz == 0


def test_a_budget_caps_the_calibration_and_warns():
    rows, keys = _clustered(n=2000, d=16, topics=2000, seed=8)
    threshold = _top_score(rows, keys, 0.01)
    with pytest.warns(UserWarning, match="edge recall .* below the target 0.95"):
        _, info = ivf_torch_threshold_graph(
            rows, keys, threshold, normalize=False, nlist=40, max_searched_fraction=0.1, device="cpu",
            show_progress=False,
        )  # fmt: skip
    assert info["recall_target_met"] is False and info["searched_fraction"] <= 0.1


def test_normalised_cosine_graph_and_guards(monkeypatch):
    monkeypatch.setattr(ivf, "_EXACT_ABOVE", 1.01)
    rows, keys = _clustered(n=600, d=8, seed=9)
    scaled = rows * np.random.default_rng(1).uniform(0.5, 3.0, size=(600, 1)).astype(np.float32)
    graph, info = ivf_torch_threshold_graph(scaled, torch.from_numpy(keys), 0.9, nlist=8, nprobe=8,
                                            device="cpu", show_progress=False)  # fmt: skip
    assert info["exact_fallback"] is False
    assert (graph != threshold_graph(rows, keys, 0.9, device="cpu")).nnz == 0
    with pytest.raises(DenseGraphError, match="edges per row"):
        ivf_torch_threshold_graph(rows, keys, -1.0, nlist=8, nprobe=2, max_avg_degree=4, device="cpu")
    with pytest.raises(ConfigError, match="nprobe must be a positive integer"):
        ivf_torch_threshold_graph(rows, keys, 0.5, nprobe=0)
    with pytest.raises(ConfigError, match="nlist must be a positive integer"):
        ivf_torch_threshold_graph(rows, keys, 0.5, nlist=True)
    with pytest.raises(ConfigError, match="recall_target"):
        ivf_torch_threshold_graph(rows, keys, 0.5, recall_target=0.0)
    with pytest.raises(ConfigError, match="aligned"):
        ivf_torch_threshold_graph(rows[:10], keys, 0.5, drop_diagonal=True)


def test_both_layouts_train_their_kmeans_on_256_keys_per_list(monkeypatch):
    sampled = []
    original = ivf.spherical_kmeans
    monkeypatch.setattr(
        ivf,
        "spherical_kmeans",
        lambda points, *a, **kw: sampled.append(len(points)) or original(points, *a, **kw),
    )
    rows, keys = _clustered(n=6000, d=8, topics=30, seed=6)
    threshold_layout(rows, keys, 0.9, nlist=20, nprobe=2, device="cpu")
    ivf.ivf_layout(rows, keys, 5, nlist=20, nprobe=2, device="cpu")
    assert sampled == [20 * ivf._TRAIN_PER_LIST] * 2 == [5120, 5120]  # 64 per list gave much worse lists
