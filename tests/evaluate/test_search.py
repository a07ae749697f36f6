"""Chunked exact top-k: deterministic tie rule and bounded block size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hardbatch.evaluate.search as search
from hardbatch.evaluate.search import auto_chunk_size, topk_search, topk_with_ties


def _reference_topk(scores: np.ndarray, k: int) -> np.ndarray:
    # Score descending, then index ascending.
    return np.stack([np.lexsort((np.arange(len(row)), -row))[:k] for row in scores])


@pytest.mark.parametrize("k", [1, 3, 10, 40])
def test_topk_with_ties_matches_lexicographic_order(k):
    rng = np.random.default_rng(k)
    scores = rng.integers(0, 4, size=(25, 40)).astype(np.float32)  # heavy ties at every boundary
    values, indices = topk_with_ties(torch.from_numpy(scores), k)
    expected = _reference_topk(scores, k)
    np.testing.assert_array_equal(indices.numpy(), expected)
    np.testing.assert_array_equal(values.numpy(), np.take_along_axis(scores, expected, axis=1))


def test_topk_search_is_chunk_size_invariant_and_blocks_stay_small(monkeypatch):
    rng = np.random.default_rng(0)
    queries = rng.integers(-1, 2, size=(31, 4)).astype(np.float32)
    corpus = rng.integers(-1, 2, size=(57, 4)).astype(np.float32)
    seen_rows = []
    original = search.iter_similarity_blocks

    def spy(*args, **kwargs):
        for start, block in original(*args, **kwargs):
            seen_rows.append(block.shape[0])
            yield start, block

    monkeypatch.setattr(search, "iter_similarity_blocks", spy)
    _, small = topk_search(queries, corpus, 12, chunk_size=4, device="cpu", show_progress=False)
    assert max(seen_rows) == 4
    _, large = topk_search(queries, corpus, 12, chunk_size=1000, device="cpu", show_progress=False)
    np.testing.assert_array_equal(small, large)
    np.testing.assert_array_equal(small, _reference_topk(queries @ corpus.T, 12))


def test_k_larger_than_corpus_is_capped():
    scores, indices = topk_search(
        np.eye(2, dtype=np.float32), np.eye(3, 2, dtype=np.float32), 100, device="cpu"
    )
    assert scores.shape == indices.shape == (2, 3)


def test_auto_chunk_size_bounds_block_memory():
    assert auto_chunk_size(10, 10) == 10
    assert auto_chunk_size(10**6, 10**6) * 10**6 * 16 <= 256 << 20
    assert auto_chunk_size(5, 10**12) == 1
