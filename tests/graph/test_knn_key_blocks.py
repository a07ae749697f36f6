"""Exact kNN over key blocks (``knn_exact(key_block_size=B)``) returns the unblocked answer.

The fixtures are tie-heavy on purpose: quantised embeddings (multiples of 1/4, so every product and sum is
exact in fp32 whatever the BLAS kernel, and equal scores are real ties) with runs of duplicated rows and
keys. The tie rule then decides both the order and *which* tied keys enter at the k-th place, so a merge
that ranks by score alone (or puts the running list before the new block), a self-exclusion applied with
the block-local index, or a row offset forgotten in one block all change the indices.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from recording import Recording

from hardbatch.errors import ConfigError
from hardbatch.graph.knn import knn, knn_exact
from hardbatch.graph.topk import merge_topk, topk_with_ties


def _quantised(n=150, d=12, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.integers(-2, 3, size=(n, d)) / 4).astype(np.float32)
    x[40:70] = x[39]  # a run of 31 equal rows: ties wider than k, across block boundaries
    x[n - 9 :] = x[3]  # duplicates far apart in index
    return x


def _lexsort_topk(rows, keys, k, exclude_self, row_offset=0):
    """The tie rule on float64 scores: score descending, then key index ascending."""
    sims = rows.astype(np.float64) @ keys.T.astype(np.float64)
    if exclude_self:
        sims[np.arange(len(rows)), np.arange(len(rows)) + row_offset] = -np.inf
    return np.stack([np.lexsort((np.arange(len(r)), -r))[:k] for r in sims])


@pytest.mark.parametrize("block", [1, 7, 19, 40, 149, 1000])
@pytest.mark.parametrize("exclude_self", [True, False])
def test_fp32_key_blocks_equal_the_unblocked_search_bit_for_bit(block, exclude_self):
    x = _quantised()
    keys = x if exclude_self else _quantised(seed=1)
    common = dict(exclude_self=exclude_self, precision="fp32", chunk_size=32, device="cpu")
    whole = knn_exact(x, keys, 40, **common)
    blocked = knn_exact(x, keys, 40, key_block_size=block, **common)
    np.testing.assert_array_equal(blocked.indices, whole.indices)
    np.testing.assert_array_equal(blocked.scores, whole.scores)
    np.testing.assert_array_equal(blocked.indices, _lexsort_topk(x, keys, 40, exclude_self))
    assert blocked.info["key_blocks"] == -(-150 // min(block, 150))


@pytest.mark.parametrize("block", [7, 41, 300])
def test_bf16_key_blocks_give_the_fp32_answer(block):
    # Every block's candidates carry the bf16 -> fp32 proof; rows without one are redone for that block.
    x = _quantised(n=160)
    whole = knn_exact(x, x, 40, exclude_self=True, precision="fp32", chunk_size=48, device="cpu")
    got = knn_exact(
        x,
        x,
        40,
        exclude_self=True,
        precision="bf16",
        margin=4,
        chunk_size=48,
        key_block_size=block,
        device="cpu",
    )
    assert got.info["precision"] == "bf16"
    np.testing.assert_array_equal(got.indices, whole.indices)
    np.testing.assert_array_equal(got.scores, whole.scores)  # exact products: same bits in any kernel


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_key_blocks_on_float_data_match_the_unblocked_search(precision):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(256, 64)).astype(np.float32)
    whole = knn_exact(x, x, 30, exclude_self=True, precision="fp32", chunk_size=64, device="cpu")
    for block in (2, 33, 255) if precision == "fp32" else (33, 255):  # 255: a last block of one key
        got = knn_exact(
            x,
            x,
            30,
            exclude_self=True,
            precision=precision,
            chunk_size=64,
            key_block_size=block,
            device="cpu",
        )
        np.testing.assert_array_equal(got.indices, whole.indices)
        # Within two fp32 summation orders of each other: a BLAS may sum a narrower block in another order
        # (and bf16 re-scores with a batched product), each within d·2⁻²⁴·Σ|x_l·y_l| of the exact product.
        # (Counting ULPs fails on scores that cancel to near zero: 12 ULP were seen on an EPYC.)
        magnitude = (np.abs(x)[:, None, :] * np.abs(x)[whole.indices]).sum(-1)
        assert np.all(np.abs(got.scores - whole.scores) <= 2 * 64 * 2.0**-24 * magnitude)


def test_row_shards_with_offset_and_key_blocks_equal_the_full_search():
    # Shard and block boundaries do not line up: each shard's self column falls in a different block.
    x = _quantised(n=150)
    full = knn_exact(x, x, 25, exclude_self=True, precision="fp32", chunk_size=16, device="cpu")
    parts = [
        knn_exact(x[lo:hi], x, 25, exclude_self=True, row_offset=lo, key_block_size=23, chunk_size=16,
                  precision="fp32", device="cpu").indices
        for lo, hi in ((0, 51), (51, 52), (52, 150))
    ]  # fmt: skip
    np.testing.assert_array_equal(np.concatenate(parts), full.indices)
    assert not (full.indices == np.arange(150)[:, None]).any()


def test_key_blocks_read_a_memmap_once_one_block_at_a_time(tmp_path):
    x = _quantised(n=150)
    np.save(tmp_path / "keys.npy", x)
    mapped = np.load(tmp_path / "keys.npy", mmap_mode="r")
    expected = knn_exact(x, x, 30, exclude_self=True, precision="fp32", chunk_size=32, device="cpu")
    on_disk = knn_exact(
        x, mapped, 30, exclude_self=True, precision="fp32", chunk_size=32, key_block_size=40, device="cpu"
    )
    np.testing.assert_array_equal(on_disk.indices, expected.indices)
    keys, rows = Recording(mapped), Recording(x)
    got = knn_exact(
        rows, keys, 30, exclude_self=True, precision="fp32", chunk_size=32, key_block_size=40, device="cpu"
    )
    np.testing.assert_array_equal(got.indices, expected.indices)
    # Keys: at most one block resident, each key read exactly once (key blocks are the outer loop).
    assert max(hi - lo for lo, hi in keys.slices) <= 40
    assert keys.slices == [(0, 40), (40, 80), (80, 120), (120, 150)]
    # Rows: one pass of 32-row blocks per key block.
    assert len(rows.slices) == 4 * 5 and max(hi - lo for lo, hi in rows.slices) <= 32


@given(
    n=st.integers(2, 60),
    d=st.integers(1, 6),
    data=st.data(),
)
def test_key_blocks_property_equal_unblocked(n, d, data):
    seed = data.draw(st.integers(0, 2**16), label="seed")
    x = (np.random.default_rng(seed).integers(-1, 2, size=(n, d)) / 2).astype(np.float32)  # many ties
    exclude = data.draw(st.booleans(), label="exclude_self")
    k = data.draw(st.integers(1, n - 1 if exclude else n), label="k")
    block = data.draw(st.integers(1, n + 3), label="key_block_size")
    chunk = data.draw(st.integers(1, n + 3), label="chunk_size")
    common = dict(exclude_self=exclude, precision="fp32", chunk_size=chunk, device="cpu")
    whole = knn_exact(x, x, k, **common)
    blocked = knn_exact(x, x, k, key_block_size=block, **common)
    np.testing.assert_array_equal(blocked.indices, whole.indices)
    np.testing.assert_array_equal(blocked.scores, whole.scores)
    np.testing.assert_array_equal(blocked.indices, _lexsort_topk(x, x, k, exclude))


def test_merge_topk_orders_ties_by_global_index_whichever_side_they_come_from():
    # The running list (earlier keys) is not always the smaller index once rows are sharded or blocks are
    # merged in another order: the rule, not the position in the concatenation, must decide.
    values, indices = merge_topk(
        torch.tensor([[3.0, 1.0, 1.0]]),
        torch.tensor([[9, 4, 8]]),
        torch.tensor([[1.0, 0.5]]),
        torch.tensor([[2, 6]]),
        3,
    )
    assert indices.tolist() == [[9, 2, 4]] and values.tolist() == [[3.0, 1.0, 1.0]]
    rng = np.random.default_rng(0)
    scores = torch.from_numpy(rng.integers(0, 4, size=(20, 30)).astype(np.float32))
    cut = 13
    left = topk_with_ties(scores[:, :cut], 6)
    right = topk_with_ties(scores[:, cut:], 6)
    merged = merge_topk(left[0], left[1], right[0], right[1] + cut, 6)
    expected = topk_with_ties(scores, 6)
    assert torch.equal(merged[0], expected[0]) and torch.equal(merged[1], expected[1])


def test_key_block_size_errors():
    x = _quantised()
    for bad in (0, -1, 2.5):
        with pytest.raises(ConfigError, match="key_block_size must be a positive integer"):
            knn_exact(x, x, 3, key_block_size=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="exact backend"):
        knn(x, x, 3, backend="hnsw", key_block_size=5)


@pytest.mark.parametrize("seed", range(4))
def test_ordered_merge_equals_the_sorting_merge_and_the_tie_rule(seed):
    # Few distinct values, -inf (a masked self column) and lists shorter than k: the counting merge of
    # ordered parts must place every tie exactly where the sort by (score, index) puts it.
    rng = np.random.default_rng(seed)
    scores = torch.from_numpy(rng.integers(0, 3, size=(50, 40)).astype(np.float32))
    scores[rng.integers(0, 50, 20), rng.integers(0, 40, 20)] = float("-inf")
    cut, k = int(rng.integers(1, 39)), int(rng.integers(1, 41))
    left = topk_with_ties(scores[:, :cut], min(k, cut))
    right = topk_with_ties(scores[:, cut:], min(k, 40 - cut))
    right = (right[0], right[1] + cut)
    counted = merge_topk(*left, *right, k, ordered=True)
    # Same parts, B given first: indices no longer ordered, so the general (sorting) path decides.
    sorted_ = merge_topk(*right, *left, k)
    expected = topk_with_ties(scores, k)
    for got in (counted, sorted_):
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
