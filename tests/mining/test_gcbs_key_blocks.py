"""``mine_gcbs(key_block_size=B)`` mines the unblocked refresh from memory-mapped inputs read block by block.

With key blocks nothing is normalised up front: the quantile sample and every graph block normalise the
rows they read. A row normalised in another shape, a quantile taken on unnormalised rows, or a graph block
with a wrong column offset changes the threshold, the graph statistics or the order, compared exactly here.
"""

from __future__ import annotations

import numpy as np
import pytest

from hardbatch.errors import ConfigError
from hardbatch.mining.gcbs import mine_gcbs


def _data(n=301, d=24, seed=1):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(15, d))
    q = centres[rng.integers(0, 15, n)] + 0.4 * rng.normal(size=(n, d))
    p = q + 0.4 * rng.normal(size=q.shape)
    return (3 * q).astype(np.float32), p.astype(np.float32)  # unnormalised: normalisation is part of it


def _mapped(tmp_path, q, p):
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "p.npy", p)
    return np.load(tmp_path / "q.npy", mmap_mode="r"), np.load(tmp_path / "p.npy", mmap_mode="r")


def _assert_same_refresh(got, expected):
    assert got.threshold == expected.threshold and got.quantile == expected.quantile
    np.testing.assert_array_equal(got.order, expected.order)
    assert [b.tolist() for b in got.batches] == [b.tolist() for b in expected.batches]
    assert (got.graph != expected.graph).nnz == 0
    stats = {k: v for k, v in got.stats.items() if k not in ("key_block_size", "key_blocks")}
    assert stats == expected.stats


CASES = {
    "sampled_quantile": dict(target_degree=8, sample_size=4000, seed=3),
    "exact_quantile": dict(quantile=0.99, seed=0),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_key_blocks_mine_the_unblocked_refresh(tmp_path, case, precision):
    q, p = _data()
    options = dict(device="cpu", chunk_size=64, show_progress=False, **CASES[case])
    # Each precision against itself: on float data the bf16 path's per-pair fp32 re-scoring and the fp32
    # matmul may round an entry at the threshold differently (an exact quantile is such an entry).
    whole = mine_gcbs(q, p, 20, precision=precision, **options)
    mq, mp = _mapped(tmp_path, q, p)
    blocked = mine_gcbs(mq, mp, 20, precision=precision, key_block_size=37, **options)
    _assert_same_refresh(blocked, whole)
    assert blocked.stats["key_block_size"] == 37 and blocked.stats["key_blocks"] == 9
    assert whole.stats["nnz_directed"] > 300


def test_memory_budget_chooses_the_block(tmp_path):
    from hardbatch.graph.threshold import threshold_working_set

    q, p = _data()
    options = dict(device="cpu", chunk_size=64, show_progress=False, target_degree=8, precision="fp32")
    whole = mine_gcbs(q, p, 20, **options)
    budget = threshold_working_set(290, 24, 64, "fp32")
    got = mine_gcbs(*_mapped(tmp_path, q, p), 20, memory_budget=budget, **options)
    _assert_same_refresh(got, whole)
    assert got.stats["key_block_size"] == 290 and got.stats["key_blocks"] == 2
    with pytest.raises(ConfigError, match="too small for the threshold graph"):
        mine_gcbs(q, p, 20, memory_budget="16KiB", **options)
    with pytest.raises(ConfigError, match="graph_method='exact' only"):
        mine_gcbs(q, p, 20, key_block_size=50, graph_method="ivf", device="cpu")
    with pytest.raises(ConfigError, match="not both"):
        mine_gcbs(q, p, 20, key_block_size=50, memory_budget="1GiB", device="cpu")
