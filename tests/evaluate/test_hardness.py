from __future__ import annotations

import numpy as np
import pytest
import torch

from hardbatch.evaluate.hardness import (
    batch_hardness,
    group_stats,
    pair_coverage,
    random_batches_like,
    summarize_hardness,
    teacher_neighbor_pairs,
)


def test_batch_metrics_match_a_direct_computation():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(50, 8)).astype(np.float32)
    p = (q + rng.normal(size=q.shape)).astype(np.float32)
    batches = [list(range(i, min(i + 7, 50))) for i in range(0, 50, 7)]  # sizes 7 ... and a last of 1
    h = batch_hardness(q, p, batches, scale=10.0, group_bytes=2000)  # tiny groups: exercises grouping
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    pn = p / np.linalg.norm(p, axis=1, keepdims=True)
    means, maxes, losses, correct = [], [], [], []
    for b in batches:
        if len(b) < 2:
            continue
        s = qn[b] @ pn[b].T
        off = ~np.eye(len(b), dtype=bool)
        means.extend((s * off).sum(1) / (len(b) - 1))
        maxes.extend(np.where(off, s, -np.inf).max(1))
        correct.extend(np.diag(s) > np.where(off, s, -np.inf).max(1))
        logits = torch.tensor(10.0 * s)
        losses.append(torch.nn.functional.cross_entropy(logits, torch.arange(len(b))).item())
    assert np.allclose(h.row_neg_mean, means, atol=1e-5)
    assert np.allclose(h.row_neg_max, maxes, atol=1e-5)
    assert np.array_equal(h.row_correct, correct)
    assert np.allclose(h.batch_loss, losses, atol=1e-4)
    summary = summarize_hardness(h)
    assert summary["batches"] == 7 and summary["rows"] == 49
    assert summary["neg_sim_p10"] <= summary["neg_sim_p50"] <= summary["neg_sim_p90"]


def test_neighbor_pairs_and_coverage():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    rows, cols = teacher_neighbor_pairs(x, x, k=3, chunk_size=7, device="cpu")
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = xn @ xn.T
    np.fill_diagonal(s, -np.inf)
    expected = np.argsort(-s, axis=1)[:, :3]
    assert np.array_equal(np.sort(cols.reshape(40, 3), 1), np.sort(expected, 1))
    assert (rows != cols).all()
    everything = [list(range(40))]
    assert pair_coverage(rows, cols, everything, 40) == 1.0
    singletons = [[i] for i in range(40)]
    assert pair_coverage(rows, cols, singletons, 40) == 0.0


def test_random_batches_like_and_group_stats():
    batches = random_batches_like([[0] * 4, [0] * 4, [0] * 2], 12, seed=5)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert len(set(np.concatenate(batches).tolist())) == 10
    labels = np.array([0, 0, 1, 1, 2, 2, -1])
    stats = group_stats(labels, [[0, 1], [2, 4, 6], [3, 5]])
    assert stats["groups_per_batch"] == [1, 2, 2] and stats["group_sizes"] == [2, 2, 2]
    with pytest.raises(ValueError):
        random_batches_like([[0] * 8], 4)
