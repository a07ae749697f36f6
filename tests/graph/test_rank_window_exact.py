"""Exact values of the rank-window helpers (boundaries, combined filters, statistics): mutmut survivors."""

from __future__ import annotations

import numpy as np
import pytest

from hardbatch.errors import ConfigError
from hardbatch.graph.rank_window import filter_window, graph_stats, mutual_graph, rank_window, window_matrix


def test_filters_keep_candidates_exactly_at_the_bound():
    indices = np.array([[1, 2, 3]])
    scores = np.array([[0.5, 0.25, 0.75]], dtype=np.float32)  # exactly representable
    positive = np.array([0.75], dtype=np.float32)
    # score <= positive - margin: 0.5 is exactly at the bound and stays.
    assert filter_window(indices, scores, positive_scores=positive, absolute_margin=0.25).tolist() == [
        [1, 2, -1]
    ]
    # score <= positive * (1 - relative): 0.75 * (1 - 1/3) = 0.5.
    kept = filter_window(indices, scores, positive_scores=np.array([1.0]), relative_margin=0.5)
    assert kept.tolist() == [[1, 2, -1]]
    assert filter_window(indices, scores, max_score=0.5).tolist() == [[1, 2, -1]]


def test_filters_combine():
    indices = np.array([[1, 2, 3, 4]])
    scores = np.array([[0.9, 0.6, 0.3, 0.1]], dtype=np.float32)
    positive = np.array([1.0], dtype=np.float32)
    both = filter_window(indices, scores, positive_scores=positive, absolute_margin=0.05, relative_margin=0.5)
    # The relative margin drops 0.6 although the absolute one keeps it, and the other way round below.
    assert both.tolist() == [[-1, -1, 3, 4]]
    other = filter_window(
        indices, scores, positive_scores=positive, absolute_margin=0.5, relative_margin=0.05
    )
    assert other.tolist() == [[-1, -1, 3, 4]]
    all_three = filter_window(
        indices, scores, positive_scores=positive, absolute_margin=0.5, relative_margin=0.05, max_score=0.2
    )
    assert all_three.tolist() == [[-1, -1, -1, 4]]


def test_text_filter_leaves_empty_slots_alone_and_keeps_row_zero_candidates():
    # Row 1's window holds example 0 and an empty slot; example 0's text differs from row 1's.
    indices = np.array([[1, -1], [0, -1], [-1, 0]])
    out = filter_window(indices, text_ids=np.array([5, 6, 5]))
    assert out.tolist() == [[1, -1], [0, -1], [-1, -1]]  # row 2 shares text 5 with example 0
    assert out.dtype == np.int64 and out is not indices


def test_graph_stats_values():
    directed = window_matrix(np.array([[1, 2], [0, -1], [0, 1], [-1, -1]]))
    mutual = mutual_graph(directed)
    assert mutual.toarray().tolist() == [[0, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert mutual.dtype == np.int8
    stats = graph_stats(directed, mutual)
    assert stats == {
        "nodes": 4,
        "directed_edges": 5,
        "mutual_edges": 2,
        "mutual_fraction": pytest.approx(0.8),
        "isolated_nodes": 1,
        "mean_degree": pytest.approx(1.0),
    }
    empty = window_matrix(np.full((3, 1), -1))
    assert graph_stats(empty, mutual_graph(empty))["mutual_fraction"] == 0.0


def test_window_matrix_shape_and_bounds():
    matrix = window_matrix(np.array([[3], [0]]), num_nodes=4)
    assert matrix.shape == (2, 4) and matrix.toarray().tolist() == [[0, 0, 0, 1], [1, 0, 0, 0]]
    assert matrix.dtype == np.int8 and matrix.indices.dtype == np.int32
    with pytest.raises(ConfigError, match="id 4"):
        window_matrix(np.array([[4], [0]]), num_nodes=4)
    with pytest.raises(ConfigError, match="square"):
        mutual_graph(matrix)


def test_rank_window_bounds():
    ranked = np.arange(8).reshape(2, 4)
    assert rank_window(ranked, skip=0, window=1).tolist() == [[0], [4]]
    assert rank_window(ranked, skip=3, window=5).tolist() == [[3], [7]]
    with pytest.raises(ConfigError, match="window >= 1"):
        rank_window(ranked, skip=0, window=0)
    with pytest.raises(ConfigError, match="skip >= 0"):
        rank_window(ranked, skip=-1, window=2)
