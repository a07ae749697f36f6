"""A mining fixture whose query-vs-positive answer differs from every query-vs-query or positive-vs-positive one.

Groups come in partner pairs (2t, 2t + 1): the queries of group g sit at centre c_g, its positives at the
centre of its partner c_{g ^ 1}. So query i's nearest positives are those of the partner group, whereas
query-vs-query and positive-vs-positive similarities point to i's own group.
"""

from __future__ import annotations

import numpy as np


def swapped_pairs(num_groups: int = 8, size: int = 4, dim: int = 32, noise: float = 0.15, seed: int = 0):
    """(query, positive, group) with the positives of group g near the queries of group g ^ 1."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_groups, dim))
    group = rng.permutation(np.repeat(np.arange(num_groups), size))
    query = centers[group] + noise * rng.normal(size=(group.size, dim))
    positive = centers[group ^ 1] + noise * rng.normal(size=(group.size, dim))
    return query.astype(np.float32), positive.astype(np.float32), group
