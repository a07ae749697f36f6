"""Key blocks chosen from a memory budget (``key_block_size="auto"``, ``memory_budget="4GiB"``).

The choice is checked against brute force (the largest block whose working set fits, never one that does
not), the formulas against their documented terms, and the searches against the unblocked answer with the
block they report.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hardbatch.errors import ConfigError
from hardbatch.graph.budget import (
    MIN_KEY_BLOCK,
    check_key_block_options,
    key_block_for_budget,
    parse_memory_size,
    resolve_key_block_size,
)
from hardbatch.graph.knn import knn, knn_exact, knn_working_set
from hardbatch.graph.threshold import threshold_working_set


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4GiB", 4 * 2**30), ("4gib", 4 * 2**30), ("512MiB", 512 * 2**20), ("2GB", 2 * 10**9),
        ("1.5G", int(1.5 * 2**30)), ("100", 100), (" 3 KiB ", 3 * 1024), ("1e3", 1000), (4096, 4096),
        ("10 MB", 10**7), ("1T", 2**40),
    ],
)  # fmt: skip
def test_parse_memory_size(text, size):
    assert parse_memory_size(text) == size


@pytest.mark.parametrize("bad", ["", "4 GiBs", "-1GiB", "GiB", "0", 0, 0.5, True, "1.2.3G", "nan"])
def test_parse_memory_size_rejects_non_sizes(bad):
    with pytest.raises(ConfigError, match="memory_budget"):
        parse_memory_size(bad)


@given(
    slope=st.integers(1, 10_000),
    fixed=st.integers(0, 10**6),
    num_keys=st.integers(1, 5_000),
    budget=st.integers(1, 5 * 10**7),
)
def test_choice_is_the_largest_block_that_fits(slope, fixed, num_keys, budget):
    def working_set(block: int) -> int:
        return fixed + slope * block

    smallest = min(num_keys, MIN_KEY_BLOCK)
    if working_set(smallest) > budget:
        with pytest.raises(ConfigError, match="too small"):
            key_block_for_budget(budget, num_keys, working_set, "a pass")
        return
    chosen = key_block_for_budget(budget, num_keys, working_set, "a pass")
    fitting = [b for b in range(smallest, num_keys + 1) if working_set(b) <= budget]
    assert chosen == max(fitting)


def test_too_small_budget_names_the_need():
    with pytest.raises(ConfigError, match=r"memory_budget=1\.00 MiB is too small for the pass: .*256 keys"):
        key_block_for_budget(2**20, 10_000, lambda b: 8192 * b, "the pass")
    # Fewer keys than the minimum block: the minimum is all of them.
    assert key_block_for_budget(2**20, 100, lambda b: 8192 * b, "the pass") == 100


def test_option_combinations():
    check_key_block_options(None, None)
    check_key_block_options(64, None)
    check_key_block_options("auto", "1GiB")
    check_key_block_options(None, "1GiB")
    with pytest.raises(ConfigError, match="needs memory_budget"):
        check_key_block_options("auto", None)
    with pytest.raises(ConfigError, match="not both"):
        check_key_block_options(64, "1GiB")
    with pytest.raises(ConfigError, match="positive integer or 'auto'"):
        check_key_block_options("big", None)
    with pytest.raises(ConfigError, match="key_block_size must be a positive integer"):
        check_key_block_options(-3, None)
    assert resolve_key_block_size(None, None, 10, lambda b: b, "x") is None
    assert resolve_key_block_size(7, None, 10, lambda b: b, "x") == 7
    assert resolve_key_block_size(None, 5000, 10_000, lambda b: b, "x") == 5000


def test_working_set_formulas():
    b, d, c = 10_000, 384, 1024
    assert knn_working_set(b, d, c, "fp32") == 8 * b * d + 8 * c * d + 16 * c * b
    assert knn_working_set(b, d, c, "bf16") == 10 * b * d + 8 * c * d + 32 * c * b + (4 << 20)
    # Automatic chunk: at most 8192 rows and block_entries scores (16 rows when the block is wider).
    assert knn_working_set(b, d, None, "fp32", 2**20) == 8 * b * d + 8 * 8192 * d + 16 * 2**20
    assert knn_working_set(10**6, d, None, "fp32", 2**20) == 8 * 10**6 * d + 8 * 8192 * d + 16 * 16 * 10**6
    assert threshold_working_set(b, d, 2048, "fp32") == 8 * b * d + 8 * 2048 * d + 16 * 2048 * b
    assert (
        threshold_working_set(b, d, 2048, "fp32", normalize=False) == 4 * b * d + 8 * 2048 * d + 16 * 2048 * b
    )
    assert threshold_working_set(b, d, 2048, "bf16") == threshold_working_set(b, d, 2048) + 2 * b * d + 3 * (
        16 << 20
    )
    for formula in (lambda k: knn_working_set(k, d, None, "bf16"), lambda k: threshold_working_set(k, d, 64)):
        values = [formula(k) for k in range(1, 40_000, 37)]
        assert values == sorted(values)  # nondecreasing: the bisection's answer is the largest that fits


def test_knn_exact_chooses_the_block_and_returns_the_unblocked_answer():
    rng = np.random.default_rng(0)
    x = (rng.integers(-2, 3, size=(1200, 8)) / 4).astype(np.float32)
    whole = knn_exact(x, x, 20, exclude_self=True, precision="fp32", device="cpu", chunk_size=64)
    budget = knn_working_set(500, 8, 64, "fp32")
    got = knn_exact(
        x, x, 20, exclude_self=True, precision="fp32", device="cpu", chunk_size=64, memory_budget=budget
    )
    assert got.info["key_block_size"] == 500 and got.info["key_blocks"] == 3
    assert got.info["memory_budget"] == budget and got.info["chunk_size"] == 64
    np.testing.assert_array_equal(got.indices, whole.indices)
    np.testing.assert_array_equal(got.scores, whole.scores)
    # Automatic chunk under a budget: the score block takes at most half of it.
    auto = knn_exact(x, x, 20, exclude_self=True, precision="fp32", device="cpu", key_block_size="auto",
                     memory_budget="4MiB")  # fmt: skip
    block, chunk = auto.info["key_block_size"], auto.info["chunk_size"]
    assert 16 * chunk * block <= 2 * 2**20 and knn_working_set(block, 8, chunk, "fp32") <= 4 * 2**20
    np.testing.assert_array_equal(auto.indices, whole.indices)
    with pytest.raises(ConfigError, match="too small for the exact kNN"):
        knn_exact(x, x, 20, device="cpu", precision="fp32", memory_budget="100KiB")
    with pytest.raises(ConfigError, match="only apply to the exact backend"):
        knn(x, x, 3, backend="hnsw", memory_budget="1GiB")
