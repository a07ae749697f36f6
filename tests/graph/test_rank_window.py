from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hardbatch.errors import ConfigError
from hardbatch.graph.rank_window import filter_window, graph_stats, mutual_graph, rank_window, window_matrix


def test_rank_window_is_a_view_of_the_requested_ranks():
    ranked = np.arange(20).reshape(2, 10)
    window = rank_window(ranked, skip=3, window=4)
    assert window.tolist() == [[3, 4, 5, 6], [13, 14, 15, 16]] and np.shares_memory(window, ranked)
    assert rank_window(ranked, skip=12, window=4).shape == (2, 0)
    with pytest.raises(ConfigError):
        rank_window(ranked, skip=-1, window=4)


def test_filters_follow_mine_hard_negatives_semantics():
    indices = np.array([[1, 2, 3, 4]])
    scores = np.array([[0.95, 0.85, 0.7, 0.3]], dtype=np.float32)
    positive = np.array([1.0], dtype=np.float32)
    assert filter_window(indices, scores, positive_scores=positive, absolute_margin=0.1).tolist() == [
        [-1, 2, 3, 4]
    ]
    assert filter_window(indices, scores, positive_scores=positive, relative_margin=0.2).tolist() == [
        [-1, -1, 3, 4]
    ]
    assert filter_window(indices, scores, max_score=0.5).tolist() == [[-1, -1, -1, 4]]
    text_ids = np.array([7, 1, 7])  # example 2 has the same positive text as example 0
    windows = np.array([[1, 2], [2, 0], [0, 1]])
    assert filter_window(windows, text_ids=text_ids).tolist() == [[1, -1], [2, 0], [-1, 1]]
    with pytest.raises(ConfigError, match="positive scores"):
        filter_window(indices, scores, absolute_margin=0.1)


def _mutual_bruteforce(windows):
    edges = {(i, int(j)) for i, row in enumerate(windows) for j in row if j >= 0 and j != i}
    return {(i, j) for (i, j) in edges if (j, i) in edges}


@given(
    st.integers(2, 30).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n - 1), st.integers(0, 10**6)))
)
def test_mutual_graph_matches_set_intersection(args):
    n, width, seed = args
    rng = np.random.default_rng(seed)
    windows = np.stack([rng.permutation(np.delete(np.arange(n), i))[:width] for i in range(n)])
    windows[rng.random(windows.shape) < 0.2] = -1  # filtered candidates
    directed = window_matrix(windows)
    mutual = mutual_graph(directed)
    coo = mutual.tocoo()
    assert set(zip(coo.row.tolist(), coo.col.tolist())) == _mutual_bruteforce(windows)
    assert (mutual != mutual.T).nnz == 0 and mutual.diagonal().sum() == 0
    stats = graph_stats(directed, mutual)
    assert stats["directed_edges"] == int((windows >= 0).sum())
    assert stats["mutual_edges"] * 2 == mutual.nnz
    assert stats["isolated_nodes"] == int((np.diff(mutual.indptr) == 0).sum())


def test_window_matrix_rejects_out_of_range_ids_and_handles_empty():
    with pytest.raises(ConfigError, match="id 5"):
        window_matrix(np.array([[5], [0]]), num_nodes=2)
    empty = mutual_graph(window_matrix(np.full((4, 3), -1)))
    assert empty.shape == (4, 4) and empty.nnz == 0
    assert graph_stats(window_matrix(np.full((4, 3), -1)), empty)["isolated_nodes"] == 4


def test_mutual_graph_drops_self_loops():
    # A window that names its own row (a label graph, a caller's own windows) is no edge of the graph.
    windows = np.array([[0, 1], [1, 0], [2, 0], [3, 2]])
    directed = window_matrix(windows)
    mutual = mutual_graph(directed)
    coo = mutual.tocoo()
    assert sorted(zip(coo.row.tolist(), coo.col.tolist())) == [(0, 1), (1, 0)]
    assert mutual.diagonal().sum() == 0 and directed.nnz == 8
