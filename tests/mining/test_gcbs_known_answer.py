"""GCBS against brute force on a fixture where the query × positive graph differs from query × query.

The queries of group g sit at centre c_g and its positives at the centre of its partner group g ^ 1 (see
``known_answer.py``): cos(q_i, p_j) is high exactly when j belongs to i's partner group, while
cos(q_i, q_j) and cos(p_i, p_j) are high within i's own group.
"""

from __future__ import annotations

import numpy as np
import pytest
from known_answer import swapped_pairs

from hardbatch.mining import mine_gcbs


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64) / np.linalg.norm(a, axis=1, keepdims=True)
    b = b.astype(np.float64) / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


@pytest.mark.parametrize("quantile", [0.875, 0.95, 0.99])
def test_threshold_is_the_quantile_of_query_positive_cosines(quantile):
    query, positive, _ = swapped_pairs()
    result = mine_gcbs(query, positive, 8, quantile=quantile, device="cpu", seed=0)
    sims = _cosines(query, positive)
    tail = round((1 - quantile) * sims.size)
    expected = np.sort(sims.reshape(-1))[::-1][tail]  # exactly `tail` entries lie above it
    assert result.threshold == pytest.approx(expected, abs=1e-5)
    above = sims > result.threshold + 1e-6
    np.fill_diagonal(above, False)
    want = above | above.T
    assert (result.graph.toarray() > 0).tolist() == want.tolist()


def test_batches_are_partner_pairs_of_groups():
    query, positive, group = swapped_pairs()
    # 4 partners per row on average: the graph is the complete bipartite graph of each partner pair.
    result = mine_gcbs(query, positive, 8, target_degree=4, device="cpu", seed=3)
    assert result.stats["components"] == 4
    for batch in result.batches:
        members = np.bincount(group[batch], minlength=8)
        pair = group[batch[0]] // 2
        assert members[2 * pair] == 4 and members[2 * pair + 1] == 4, group[batch]
