"""The threshold graph over key blocks (``threshold_graph(key_block_size=B)``) is the unblocked graph.

The fixtures are tie-heavy on purpose: quantised embeddings (multiples of 1/4, unnormalised, so every
product and sum is exact in fp32 whatever the BLAS kernel) with runs of duplicated rows and keys, and
thresholds placed *on* score values that many entries share, so "strictly above" decides whole runs. A
column offset forgotten in one block, the diagonal dropped at the block-local index, hits of several blocks
left in block order instead of row order (unsorted CSR columns) or a density cap counted per block all
change the CSR arrays, which are compared exactly against the unblocked graph and a float64 reference.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from recording import Recording

from hardbatch.errors import ConfigError
from hardbatch.graph.threshold import threshold_graph, threshold_working_set


def _quantised(n=150, d=12, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.integers(-2, 3, size=(n, d)) / 4).astype(np.float32)
    x[40:70] = x[39]  # a run of 31 equal rows: tied scores across block boundaries
    x[n - 9 :] = x[3]  # duplicates far apart in index
    return x


def _reference(rows, keys, threshold, drop_diagonal=False, row_offset=0):
    dense = rows.astype(np.float64) @ keys.T.astype(np.float64) > threshold
    if drop_diagonal:
        dense[np.arange(len(rows)), np.arange(len(rows)) + row_offset] = False
    return dense


def _assert_same_csr(got, expected):
    assert got.shape == expected.shape and got.has_sorted_indices
    np.testing.assert_array_equal(got.indptr, expected.indptr)
    np.testing.assert_array_equal(got.indices, expected.indices)
    np.testing.assert_array_equal(got.data, expected.data)


def _tied_threshold(rows, keys, quantile=0.8):
    """A score value taken by many entries, near the ``quantile`` of all scores (exact in fp32)."""
    return float(np.quantile(rows.astype(np.float64) @ keys.T.astype(np.float64), quantile))


COMMON = dict(normalize=False, device="cpu", chunk_size=32)


@pytest.mark.parametrize("block", [1, 2, 7, 40, 149, 150, 1000])
@pytest.mark.parametrize("drop_diagonal", [False, True])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_key_blocks_give_the_unblocked_csr(block, drop_diagonal, precision):
    x = _quantised()
    t = _tied_threshold(x, x)
    whole = threshold_graph(x, x, t, drop_diagonal=drop_diagonal, precision="fp32", **COMMON)
    blocked = threshold_graph(
        x, x, t, drop_diagonal=drop_diagonal, precision=precision, key_block_size=block, **COMMON
    )
    _assert_same_csr(blocked, whole)
    assert np.array_equal(blocked.toarray().astype(bool), _reference(x, x, t, drop_diagonal))
    ties = np.isclose(x.astype(np.float64) @ x.T.astype(np.float64), t).sum()
    assert ties > 100 and whole.nnz > 0  # the threshold really cuts through a tie run


def test_row_shards_with_offset_and_key_blocks_equal_the_full_graph():
    # Shard and block boundaries do not line up: each shard's diagonal falls in other key blocks.
    x, keys = _quantised(), _quantised(seed=1)
    keys[:60] = x[:60]  # a diagonal with entries above the threshold
    t = _tied_threshold(x, keys, 0.9)
    full = threshold_graph(x, keys, t, drop_diagonal=True, precision="fp32", **COMMON)
    parts = [
        threshold_graph(x[lo:hi], keys, t, drop_diagonal=True, row_offset=lo, key_block_size=23,
                        precision="fp32", **COMMON)
        for lo, hi in ((0, 51), (51, 52), (52, 150))
    ]  # fmt: skip
    import scipy.sparse as sp

    _assert_same_csr(sp.vstack(parts, format="csr"), full)
    assert full.diagonal().sum() == 0 and _reference(x, keys, t).diagonal().sum() > 0


def test_float_data_and_normalisation_per_block_match_the_unblocked_graph():
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(16, 64))[rng.integers(0, 16, 256)] + rng.normal(size=(256, 64))).astype(np.float32)
    y = x + 0.5 * rng.normal(size=x.shape).astype(np.float32)
    t = 0.45
    whole = threshold_graph(x, y, t, device="cpu", chunk_size=64, precision="fp32", drop_diagonal=True)
    assert whole.nnz > 200
    for block in (2, 33, 255):  # 255: a last block of one key, padded to a matrix product
        got = threshold_graph(
            x, y, t, device="cpu", chunk_size=64, precision="fp32", drop_diagonal=True, key_block_size=block
        )
        _assert_same_csr(got, whole)
    bf16 = threshold_graph(x, y, t, device="cpu", chunk_size=64, precision="bf16", key_block_size=33)
    plain = threshold_graph(x, y, t, device="cpu", chunk_size=64, precision="bf16")
    _assert_same_csr(bf16, plain)  # the fp32 re-scoring of a pair does not depend on the block


@pytest.mark.parametrize("block", [None, 1, 17, 150])
def test_density_cap_stops_exactly_where_the_unblocked_graph_does(block):
    x = _quantised()
    t = _tied_threshold(x, x, 0.7)
    edges = threshold_graph(x, x, t, drop_diagonal=True, precision="fp32", **COMMON).nnz
    n = len(x)
    at_cap, over_cap = (edges + 0.5) / n, (edges - 0.5) / n  # int(cap · n) = edges, edges - 1
    got = threshold_graph(
        x, x, t, drop_diagonal=True, precision="fp32", key_block_size=block, max_avg_degree=at_cap, **COMMON
    )
    assert got.nnz == edges
    with pytest.raises(ConfigError, match="edges per row"):
        threshold_graph(
            x, x, t, drop_diagonal=True, precision="fp32", key_block_size=block, max_avg_degree=over_cap,
            **COMMON,
        )  # fmt: skip


def test_key_blocks_read_a_memmap_once_one_block_at_a_time(tmp_path):
    x = _quantised()
    np.save(tmp_path / "keys.npy", x)
    mapped = np.load(tmp_path / "keys.npy", mmap_mode="r")
    t = _tied_threshold(x, x)
    expected = threshold_graph(x, x, t, precision="fp32", **COMMON)
    _assert_same_csr(threshold_graph(x, mapped, t, precision="fp32", key_block_size=40, **COMMON), expected)
    keys, rows = Recording(mapped), Recording(x)
    got = threshold_graph(rows, keys, t, precision="fp32", key_block_size=40, **COMMON)
    _assert_same_csr(got, expected)
    assert keys.slices == [(0, 40), (40, 80), (80, 120), (120, 150)]  # each key read once
    assert len(rows.slices) == 4 * 5 and max(hi - lo for lo, hi in rows.slices) <= 32


def test_auto_key_block_from_a_memory_budget():
    x = _quantised(n=600, d=12)
    t = _tied_threshold(x, x)
    whole = threshold_graph(x, x, t, precision="fp32", **COMMON)
    budget = threshold_working_set(300, 12, 32, "fp32", normalize=False)
    keys = Recording(x)
    got = threshold_graph(x, keys, t, precision="fp32", key_block_size="auto", memory_budget=budget, **COMMON)
    _assert_same_csr(got, whole)
    assert max(hi - lo for lo, hi in keys.slices) == 300  # the largest block whose working set fits
    with pytest.raises(ConfigError, match="too small for the threshold graph"):
        threshold_graph(x, x, t, precision="fp32", memory_budget="64KiB", **COMMON)
    with pytest.raises(ConfigError, match="needs memory_budget"):
        threshold_graph(x, x, t, key_block_size="auto", **COMMON)
    with pytest.raises(ConfigError, match="key_block_size must be a positive integer"):
        threshold_graph(x, x, t, key_block_size=0, **COMMON)


@given(n=st.integers(2, 50), d=st.integers(1, 6), data=st.data())
def test_key_blocks_property_equal_unblocked(n, d, data):
    seed = data.draw(st.integers(0, 2**16), label="seed")
    rng = np.random.default_rng(seed)
    x = (rng.integers(-1, 2, size=(n, d)) / 2).astype(np.float32)  # many ties
    y = (rng.integers(-1, 2, size=(n, d)) / 2).astype(np.float32)
    scores = np.unique(x.astype(np.float64) @ y.T.astype(np.float64))
    t = float(data.draw(st.sampled_from(scores.tolist()), label="threshold"))  # on a tie value
    drop = data.draw(st.booleans(), label="drop_diagonal")
    block = data.draw(st.integers(1, n + 3), label="key_block_size")
    chunk = data.draw(st.integers(1, n + 3), label="chunk_size")
    precision = data.draw(st.sampled_from(["fp32", "bf16"]), label="precision")
    common = dict(normalize=False, device="cpu", chunk_size=chunk, drop_diagonal=drop)
    whole = threshold_graph(x, y, t, precision="fp32", **common)
    blocked = threshold_graph(x, y, t, precision=precision, key_block_size=block, **common)
    _assert_same_csr(blocked, whole)
    assert np.array_equal(whole.toarray().astype(bool), _reference(x, y, t, drop))
