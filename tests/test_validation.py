"""Degenerate embeddings are refused with a one-line DataError naming the array and the row."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from hardbatch.errors import ConfigError, DataError
from hardbatch.validation import check_embeddings


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 0), np.float32), r"emb\.npy: embedding dimension is 0 \(shape \(4, 0\)\)"),
        (np.zeros((4, 3), np.float32), r"emb\.npy: row 0 is all zeros \(norm 0; 2 such rows in rows 0-1\)"),
        (np.array([[1, 0], [0, 0], [0, 1]], np.float32), r"emb\.npy: row 1 is all zeros \(norm 0; 1 such"),
        (np.array([[1, 0], [np.nan, 1]], np.float32), r"emb\.npy: row 1 contains NaN or inf"),
        (torch.zeros(2, 5), r"emb\.npy: row 0 is all zeros"),
        (np.zeros((0, 3), np.float32), r"emb\.npy: no rows"),
    ],
)
def test_degenerate_embeddings_are_data_errors(array, message):
    with pytest.raises(DataError, match=message):
        check_embeddings(array, "emb.npy", chunk_rows=2)


def test_zero_rows_can_be_allowed_explicitly():
    check_embeddings(np.zeros((3, 2), np.float32), "emb", allow_zero_rows=True)


def test_zero_dimension_npy_never_reaches_faiss(tmp_path):
    from hardbatch.samplers import TopicBatchSampler

    path = tmp_path / "emb.npy"
    np.save(path, np.zeros((16, 0), np.float32))
    with pytest.raises(DataError, match="embedding dimension is 0"):
        TopicBatchSampler(num_examples=16, batch_size=4, query_emb=str(path), n_clusters=2)


def test_mine_b3_refuses_all_zero_embeddings_and_an_empty_window():
    from hardbatch.mining import mine_b3

    zeros = np.zeros((16, 4), np.float32)
    with pytest.raises(DataError, match="query embeddings: row 0 is all zeros"):
        mine_b3(zeros, zeros, batch_size=4, cluster_size=2, skip=0, window=4, device="cpu")
    emb = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    # The paper's count: the example itself is rank 0 of the skipped 16, so nothing is left to link.
    with pytest.warns(UserWarning, match=r"graph of 16 examples has no edges \(skip=16"):
        mine_b3(emb, emb, batch_size=4, cluster_size=2, skip=16, window=4, device="cpu", show_progress=False)
    with pytest.raises(ConfigError, match="absolute_margin must be a finite number, got nan"):
        mine_b3(emb, emb, batch_size=4, cluster_size=2, skip=0, window=4, device="cpu",
                absolute_margin=float("nan"))  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = mine_b3(emb, emb, batch_size=4, cluster_size=2, skip=0, window=4, device="cpu",
                       max_score=-10.0, show_progress=False)  # fmt: skip
    assert plan.num_examples == 16
    assert any("has no edges" in str(w.message) for w in caught)
