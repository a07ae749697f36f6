"""B3 mining against a brute-force answer on a fixture where query-vs-positive differs from every shortcut.

Groups come in partner pairs (2t, 2t + 1): the queries of group g sit at centre c_g, its positives at the
centre of its partner c_{g ^ 1}. So query i's nearest positives are those of the partner group, whereas
query-vs-query and positive-vs-positive similarities point to i's own group. A miner that ranks the wrong
pair of sides therefore builds another window and other clusters.
"""

from __future__ import annotations

import numpy as np
import pytest
from known_answer import swapped_pairs

from hardbatch.mining import mine_b3


def brute_force_window(
    query: np.ndarray, positive: np.ndarray, skip: int, window: int, count_self: bool = False
) -> list[set[int]]:
    """Ranks [skip, skip + window) of argsort(-cos(q_i, p_j)) over j != i, in float64.

    With ``count_self`` (the paper's count) the example itself is rank 0 of the ranking, so over the other
    examples the window is ranks [skip - 1, skip + window - 1) (for skip = 0: the first window - 1).
    """
    q = query.astype(np.float64) / np.linalg.norm(query, axis=1, keepdims=True)
    p = positive.astype(np.float64) / np.linalg.norm(positive, axis=1, keepdims=True)
    scores = q @ p.T
    np.fill_diagonal(scores, -np.inf)
    ranked = np.argsort(-scores, axis=1, kind="stable")
    start, stop = (max(skip - 1, 0), skip + window - 1) if count_self else (skip, skip + window)
    return [set(row[start:stop].tolist()) for row in ranked]


@pytest.mark.parametrize("count_self", [False, True])
@pytest.mark.parametrize(("skip", "window"), [(0, 4), (1, 3), (2, 9)])
def test_window_equals_brute_force_query_vs_positive_ranking(skip, window, count_self):
    query, positive, _ = swapped_pairs()
    plan = mine_b3(
        query, positive, batch_size=8, cluster_size=8, skip=skip, window=window, device="cpu",
        count_self=count_self,
    )  # fmt: skip
    directed = plan.window.tocsr()
    got = [
        set(directed.indices[directed.indptr[i] : directed.indptr[i + 1]].tolist()) for i in range(len(query))
    ]
    assert got == brute_force_window(query, positive, skip, window, count_self)


def test_window_of_a_query_is_its_partner_group():
    query, positive, group = swapped_pairs()
    plan = mine_b3(
        query, positive, batch_size=8, cluster_size=8, skip=0, window=4, device="cpu", count_self=False
    )
    directed = plan.window.tocsr()
    for i in range(len(query)):
        neighbours = directed.indices[directed.indptr[i] : directed.indptr[i + 1]]
        assert sorted(group[neighbours].tolist()) == [group[i] ^ 1] * 4


def test_clusters_are_partner_pairs_of_groups():
    # Right ranking: the mutual graph is the complete bipartite graph between partners, so each cluster of
    # 8 is the 4 + 4 members of a partner pair. Ranking q·q or p·p would give pure groups of 4 instead.
    query, positive, group = swapped_pairs()
    plan = mine_b3(query, positive, batch_size=16, cluster_size=8, skip=0, window=4, device="cpu")
    assert plan.num_clusters == 4 and plan.remainder.size == 0
    for cluster in plan.clusters:
        members = np.bincount(group[cluster], minlength=8)
        pair = group[cluster[0]] // 2
        assert members[2 * pair] == 4 and members[2 * pair + 1] == 4, group[cluster]
    assert plan.stats["partition"]["cut"] == 0
