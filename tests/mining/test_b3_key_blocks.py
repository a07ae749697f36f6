"""``mine_b3(key_block_size=B)`` mines the plan of the unblocked search, reading the positives block by block.

The data have planted topics (so the window, not noise, decides the clusters) and duplicated positives (tie
runs in the ranking, so a merge that breaks ties differently changes the window and thereby the clusters).
"""

from __future__ import annotations

import numpy as np
import pytest

from hardbatch.errors import ConfigError
from hardbatch.mining import mine_b3

OPTIONS = dict(batch_size=20, cluster_size=10, skip=3, window=12, seed=0, device="cpu", show_progress=False)


def _data(n=240, d=16):
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(12, d))
    topic = rng.integers(0, 12, n)
    q = (centres[topic] + rng.normal(size=(n, d))).astype(np.float32)
    p = np.round(centres[topic] + rng.normal(size=(n, d))).astype(np.float32)  # coarse: many equal scores
    p[50:80] = p[49]
    sources = np.where(np.arange(n) % 3 == 0, "a", "b")
    return q, p, sources


@pytest.mark.parametrize("per_source", [False, True])
def test_plan_with_key_blocks_equals_the_unblocked_plan(tmp_path, per_source):
    q, p, sources = _data()
    np.save(tmp_path / "p.npy", p)
    mapped = np.load(tmp_path / "p.npy", mmap_mode="r")
    extra = {"sources": sources} if per_source else {}
    whole = mine_b3(q, p, precision="fp32", **OPTIONS, **extra)
    blocked = mine_b3(q, mapped, precision="fp32", key_block_size=37, **OPTIONS, **extra)
    np.testing.assert_array_equal(blocked.clusters, whole.clusters)
    np.testing.assert_array_equal(blocked.remainder, whole.remainder)
    assert (blocked.window != whole.window).nnz == 0 and (blocked.skipped != whole.skipped).nnz == 0
    infos = blocked.stats["knn_info"]
    infos = infos if isinstance(infos, list) else [infos]
    assert all(info["key_block_size"] == 37 and info["key_blocks"] > 1 for info in infos)


def test_key_block_size_needs_the_exact_backend():
    q, p, _ = _data()
    with pytest.raises(ConfigError, match="knn='exact' only"):
        mine_b3(q, p, knn="hnsw", key_block_size=50, **OPTIONS)
    with pytest.raises(ConfigError, match="key_block_size must be a positive integer"):
        mine_b3(q, p, key_block_size=0, **OPTIONS)


def test_per_source_groups_are_read_block_by_block(monkeypatch):
    # Source groups are rows ids of the inputs: with key blocks they must not be copied whole first.
    from hardbatch.graph import similarity

    q, p, sources = _data()
    reads: list[int] = []
    original_get, original_array = similarity.RowSubset.__getitem__, similarity.RowSubset.__array__

    def get(self, item):
        out = original_get(self, item)
        if self.array is p:  # positives (query rows are read a row chunk at a time, a separate bound)
            reads.append(len(out))
        return out

    def whole(self, *args, **kwargs):
        if self.array is p:  # converted whole: only a group no larger than one block may be
            reads.append(len(self))
        return original_array(self, *args, **kwargs)

    monkeypatch.setattr(similarity.RowSubset, "__getitem__", get)
    monkeypatch.setattr(similarity.RowSubset, "__array__", whole)
    blocked = mine_b3(q, p, precision="fp32", key_block_size=37, sources=sources, **OPTIONS)
    assert reads and max(reads) <= 37
    whole_plan = mine_b3(q, p, precision="fp32", sources=sources, **OPTIONS)
    np.testing.assert_array_equal(blocked.clusters, whole_plan.clusters)


def test_row_subset_reads_only_the_requested_rows():
    from hardbatch.graph.knn import knn_exact
    from hardbatch.graph.similarity import RowSubset

    x = np.round(np.random.default_rng(0).normal(size=(90, 8))).astype(np.float32)
    ids = np.flatnonzero(np.arange(90) % 3 != 1)
    subset = RowSubset(x, ids)
    assert len(subset) == 60 and subset.shape == (60, 8)
    np.testing.assert_array_equal(subset[5:9], x[ids[5:9]])
    np.testing.assert_array_equal(np.asarray(subset), x[ids])
    got = knn_exact(subset, subset, 11, exclude_self=True, key_block_size=13, precision="fp32", device="cpu")
    expected = knn_exact(x[ids], x[ids], 11, exclude_self=True, precision="fp32", device="cpu")
    np.testing.assert_array_equal(got.indices, expected.indices)
    np.testing.assert_array_equal(got.scores, expected.scores)
