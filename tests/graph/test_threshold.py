from __future__ import annotations

import numpy as np
import pytest
import torch

from hardbatch.errors import ConfigError
from hardbatch.graph.threshold import (
    estimate_similarity_quantile,
    ivf_threshold_graph,
    quantile_for_degree,
    threshold_graph,
)


def _cosine(x, y):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    return x @ y.T


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(12, 24))
    x = centers[rng.integers(12, size=600)] + 0.7 * rng.normal(size=(600, 24))
    y = x + 0.3 * rng.normal(size=x.shape)
    return x.astype(np.float32), y.astype(np.float32)


@pytest.mark.parametrize("q", [0.9, 0.99, 0.999])
def test_exact_quantile_matches_numpy(data, q):
    x, y = data
    sims = _cosine(x, y)
    t = estimate_similarity_quantile(x, y, q, device="cpu", chunk_size=128)
    assert abs(t - np.quantile(sims, q)) < 2e-3
    assert (sims > t).sum() == round((1 - q) * sims.size)


@pytest.mark.parametrize("q", [0.99, 0.999])
def test_sampled_quantile_close_to_exact(data, q):
    x, y = data
    sims = _cosine(x, y)
    t = estimate_similarity_quantile(x, y, q, sample_size=60_000, device="cpu", seed=3)  # 1/6 of entries
    kept = (sims > t).mean()
    # The sampled threshold keeps about the intended fraction of all entries.
    assert 0.6 * (1 - q) < kept < 1.6 * (1 - q)
    assert abs(t - np.quantile(sims, q)) < 0.03


def test_threshold_graph_equals_dense(data):
    x, y = data
    sims = _cosine(x, y)
    t = float(np.quantile(sims, 0.995))
    graph = threshold_graph(x, y, t, device="cpu", chunk_size=97)
    dense = sims > t
    assert graph.shape == (600, 600)
    assert np.array_equal(graph.toarray().astype(bool), dense)
    no_diag = threshold_graph(x, y, t, device="cpu", chunk_size=97, drop_diagonal=True)
    np.fill_diagonal(dense, False)
    assert np.array_equal(no_diag.toarray().astype(bool), dense)
    # A shard of rows (one rank's, in distributed GCBS) drops the global diagonal, not its local one.
    shard = threshold_graph(x[250:420], y, t, device="cpu", chunk_size=97, drop_diagonal=True, row_offset=250)
    assert np.array_equal(shard.toarray().astype(bool), dense[250:420])


def test_guards(data):
    x, y = data
    with pytest.raises(ConfigError, match="edges per row"):
        threshold_graph(x, y, -1.0, device="cpu", max_avg_degree=10)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        estimate_similarity_quantile(x, y, 1.0, device="cpu")
    with pytest.raises(ConfigError, match="target_degree"):
        quantile_for_degree(700, 600)
    assert quantile_for_degree(6, 600) == pytest.approx(0.99)


def test_ivf_graph_probing_every_list_equals_exact(data):
    pytest.importorskip("faiss")
    x, y = data
    t = float(np.quantile(_cosine(x, y), 0.995))
    exact = threshold_graph(x, y, t, device="cpu", drop_diagonal=True)
    ivf = ivf_threshold_graph(x, y, t, nlist=8, nprobe=8, batch_size=250, drop_diagonal=True)
    assert ivf.has_sorted_indices
    assert (ivf != exact).nnz == 0


def test_ivf_graph_with_few_lists_probed_is_a_high_recall_subset(data):
    pytest.importorskip("faiss")
    x, y = data
    t = float(np.quantile(_cosine(x, y), 0.995))
    exact = threshold_graph(x, y, t, device="cpu").toarray().astype(bool)
    approx = ivf_threshold_graph(x, y, t, nlist=12, nprobe=3).toarray().astype(bool)
    assert not (approx & ~exact).any(), "every IVF edge must be above the threshold"
    recall = (approx & exact).sum() / exact.sum()
    assert recall > 0.8, f"IVF recall {recall:.2f}"
    with pytest.raises(ConfigError, match="edges per row"):
        ivf_threshold_graph(x, y, -1.0, nlist=4, nprobe=4, max_avg_degree=10)


def test_threshold_graph_bf16_equals_fp32_graph():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(900, 24)).astype(np.float32)
    y = x + 0.3 * rng.normal(size=(900, 24)).astype(np.float32)
    t = estimate_similarity_quantile(x, y, 0.99, device="cpu")
    fp32 = threshold_graph(x, y, t, device="cpu", chunk_size=128, drop_diagonal=True)
    bf16 = threshold_graph(x, y, t, device="cpu", chunk_size=128, drop_diagonal=True, precision="bf16")
    assert fp32.nnz > 0 and (fp32 != bf16).nnz == 0
    # Thresholding the bf16 scores directly would not give the same graph: the test can see the difference.
    xn, yn = (torch.nn.functional.normalize(torch.from_numpy(a), dim=1).bfloat16() for a in (x, y))
    low = (xn @ yn.T).float().numpy() > t
    np.fill_diagonal(low, False)
    assert (low != fp32.toarray().astype(bool)).sum() > 0
