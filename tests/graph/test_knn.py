from __future__ import annotations

import numpy as np
import pytest
import torch

from hardbatch.errors import ConfigError
from hardbatch.graph.knn import _drop_self, knn, knn_exact, knn_faiss, knn_recall


def _data(n=300, d=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32)


def _brute(rows, keys, k, exclude_self):
    sims = rows.astype(np.float64) @ keys.T.astype(np.float64)
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("chunk", [7, 64, None])
def test_exact_matches_brute_force_in_any_chunking(exclude_self, chunk):
    rows, keys = _data()
    result = knn_exact(rows, keys, 10, exclude_self=exclude_self, chunk_size=chunk, device="cpu")
    expected = _brute(rows, keys, 10, exclude_self)
    assert result.indices.dtype == np.int32 and result.scores.dtype == np.float32
    np.testing.assert_array_equal(np.sort(result.indices, axis=1), np.sort(expected, axis=1))
    assert (np.diff(result.scores, axis=1) <= 1e-6).all()  # best first
    if exclude_self:
        assert not (result.indices == np.arange(len(rows))[:, None]).any()
    np.testing.assert_allclose(result.scores[:, 0], (rows * keys[result.indices[:, 0]]).sum(1), rtol=1e-4)


def test_exact_accepts_torch_and_normalises():
    rows, keys = _data(100, 8)
    a = knn(torch.from_numpy(rows), torch.from_numpy(keys) * 5.0, 5, normalize=True, device="cpu")
    b = knn(rows, keys, 5, normalize=True, device="cpu")
    np.testing.assert_array_equal(a.indices, b.indices)
    assert np.abs(a.scores).max() <= 1.0 + 1e-5


@pytest.mark.parametrize("index", ["hnsw", "ivf"])
def test_faiss_backends_have_high_recall_and_exclude_self(index):
    rows, _ = _data(2000, 16)
    approx = knn_faiss(rows, rows, 20, index=index, exclude_self=True, normalize=True, nprobe=64)
    assert not (approx.indices == np.arange(len(rows))[:, None]).any()
    recall = knn_recall(approx, rows, rows, sample=300, exclude_self=True, normalize=True, device="cpu")
    assert 0.85 <= recall <= 1.0
    exact = knn_exact(rows, rows, 20, exclude_self=True, normalize=True, device="cpu")
    assert knn_recall(exact, rows, rows, sample=300, exclude_self=True, normalize=True, device="cpu") == 1.0


def test_recall_detects_wrong_neighbours():
    rows, keys = _data(200, 8)
    exact = knn_exact(rows, keys, 5, device="cpu")
    shuffled = type(exact)(indices=exact.indices[::-1].copy(), scores=exact.scores)
    assert knn_recall(shuffled, rows, keys, device="cpu") < 0.2


def test_drop_self_keeps_order_and_drops_worst_when_absent():
    indices = np.array([[0, 5, 6], [7, 8, 9]])
    scores = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]], dtype=np.float32)
    kept, kept_scores = _drop_self(indices, scores, np.array([0, 1]), 2)
    assert kept.tolist() == [[5, 6], [7, 8]] and kept_scores.tolist() == [[2.0, 1.0], [3.0, 2.0]]


def test_errors():
    rows, keys = _data(10, 4)
    with pytest.raises(ConfigError, match="only 9 keys"):
        knn(rows, keys, 10, exclude_self=True)
    with pytest.raises(ConfigError, match="aligned"):
        knn(rows[:5], keys, 2, exclude_self=True)
    with pytest.raises(ConfigError, match="unknown kNN backend"):
        knn(rows, keys, 2, backend="annoy")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="faiss backends"):
        knn(rows, keys, 2, nprobe=3)


def test_ties_are_broken_by_key_index():
    rows = np.ones((3, 2), dtype=np.float32)
    keys = np.ones((6, 2), dtype=np.float32)  # every key ties
    assert knn_exact(rows, keys, 2, device="cpu").indices.tolist() == [[0, 1]] * 3
    self_excluded = knn_exact(keys, keys, 2, exclude_self=True, device="cpu").indices
    assert self_excluded.tolist() == [[1, 2], [0, 2], [0, 1], [0, 1], [0, 1], [0, 1]]


def _lexsort_topk(rows, keys, k, exclude_self):
    sims = rows.astype(np.float64) @ keys.T.astype(np.float64)
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    return np.stack([np.lexsort((np.arange(len(r)), -r))[:k] for r in sims])


@pytest.mark.parametrize("margin", [0, None])
def test_bf16_path_is_exact_on_integer_data_with_tie_runs(margin):
    # Small integers: exact in bf16 and fp32, so ties are real ties and the tie rule decides the window.
    rng = np.random.default_rng(1)
    x = rng.integers(-2, 3, size=(500, 12)).astype(np.float32)
    x[100:160] = x[99]  # a run of 61 identical rows: a tie run wider than any small margin
    y = rng.integers(-2, 3, size=(500, 12)).astype(np.float32)
    y[200:300] = y[5]
    for rows, keys, exclude in ((x, x, True), (x, y, False)):
        expected = _lexsort_topk(rows, keys, 40, exclude)
        got = knn_exact(rows, keys, 40, exclude_self=exclude, precision="bf16", margin=margin, chunk_size=97)
        np.testing.assert_array_equal(got.indices, expected)
        assert got.info["precision"] == "bf16"
        fp32 = knn_exact(rows, keys, 40, exclude_self=exclude, precision="fp32", chunk_size=97)
        np.testing.assert_array_equal(fp32.indices, expected)
        np.testing.assert_array_equal(got.scores, fp32.scores)


def test_bf16_path_matches_float64_ranks_on_unit_vectors():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(40, 64))
    x = centres[rng.integers(0, 40, 3000)] + rng.normal(size=(3000, 64))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    k = 60
    expected = _lexsort_topk(x, x, k, True)
    got = knn_exact(x, x, k, exclude_self=True, precision="bf16", device="cpu")
    window = np.mean([len(set(a[20:]) & set(b[20:])) / (k - 20) for a, b in zip(got.indices, expected)])
    assert window >= 0.999
    # bf16 scores alone (no fp32 re-scoring) disagree far more often: the test data can tell them apart.
    low = torch.from_numpy(x).bfloat16()
    block = (low @ low.T).float()
    block.fill_diagonal_(float("-inf"))
    plain = torch.topk(block, k, dim=1).indices.numpy()
    plain_window = np.mean([len(set(a[20:]) & set(b[20:])) / (k - 20) for a, b in zip(plain, expected)])
    assert plain_window < window


def test_bf16_rows_are_widened_then_redone_when_unproven():
    rng = np.random.default_rng(3)
    x = rng.integers(-1, 2, size=(600, 8)).astype(np.float32)  # few distinct scores: huge tie runs
    got = knn_exact(x, x, 30, exclude_self=True, precision="bf16", margin=1, chunk_size=100)
    assert got.info["fp32_rows_redone"] > 0 and got.info["rows_widened"] >= got.info["fp32_rows_redone"]
    np.testing.assert_array_equal(got.indices, _lexsort_topk(x, x, 30, True))


def test_bf16_rows_get_the_same_bits_in_any_row_block():
    # A tiny margin: most rows fail the first proof and are widened, a few are redone in fp32. Each row's
    # path depends on that row alone, so other chunkings (other blocks, other ranks' shards) give the same
    # bits; a margin adapted from block to block re-did other rows in fp32 and changed their last bits.
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1200, 48))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    runs = [
        knn_exact(x, x, 30, exclude_self=True, precision="bf16", margin=2, chunk_size=chunk, device="cpu")
        for chunk in (50, 97, 1200)
    ]
    assert runs[0].info["rows_widened"] > 0 and runs[0].info["fp32_rows_redone"] > 0
    for other in runs[1:]:
        np.testing.assert_array_equal(other.scores, runs[0].scores)
        np.testing.assert_array_equal(other.indices, runs[0].indices)
        assert other.info["rows_widened"] == runs[0].info["rows_widened"]
    expected = _lexsort_topk(x, x, 30, True)
    assert np.mean(runs[0].indices == expected) >= 0.999


def test_precision_choice_and_errors(monkeypatch):
    from hardbatch.graph import precision

    assert precision.resolve_precision("fp32", torch.device("cpu")) == "fp32"
    monkeypatch.setenv("HARDBATCH_MATMUL_PRECISION", "bf16")
    assert precision.resolve_precision("auto", torch.device("cpu")) == "bf16"
    monkeypatch.delenv("HARDBATCH_MATMUL_PRECISION")
    import hardbatch.device

    monkeypatch.delenv("HARDBATCH_BF16_MATMUL", raising=False)
    monkeypatch.setattr(hardbatch.device, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    precision.bf16_is_fast.cache_clear()
    assert precision.resolve_precision("auto", torch.device("cpu")) == "bf16"
    precision.bf16_is_fast.cache_clear()
    # Zen 4: bf16 for the loss and for mining alike (whole mine_b3 at 100k: 57.5 s bf16 vs 82.1 s fp32).
    monkeypatch.setattr(hardbatch.device, "cpu_flags", lambda: frozenset({"avx512_bf16", "avx512f"}))
    monkeypatch.setattr(hardbatch.device, "cpu_vendor", lambda: "AuthenticAMD")
    assert precision.resolve_precision("auto", torch.device("cpu")) == "bf16"
    precision.bf16_is_fast.cache_clear()
    monkeypatch.setattr(hardbatch.device, "cpu_vendor", lambda: "GenuineIntel")  # measured at parity
    assert precision.resolve_precision("auto", torch.device("cpu")) == "fp32"
    precision.bf16_is_fast.cache_clear()
    with pytest.raises(ConfigError, match="unknown precision"):
        precision.resolve_precision("fp8", torch.device("cpu"))


def test_ivf_calibration_reaches_window_recall_target():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4000, 16)).astype(np.float32)
    loose = knn_faiss(x, x, 40, index="ivf", exclude_self=True, normalize=True, nlist=64, nprobe=1)
    tuned = knn_faiss(
        x,
        x,
        40,
        index="ivf",
        exclude_self=True,
        normalize=True,
        nlist=64,
        recall_target=0.95,
        recall_columns=(10, 40),
    )
    assert tuned.info["nprobe"] > 1 and tuned.info["calibration"][-1][1] >= 0.95
    window = knn_recall(tuned, x, x, exclude_self=True, normalize=True, device="cpu", columns=(10, 40))
    assert window >= 0.93  # measured on other rows than the calibration's
    assert knn_recall(loose, x, x, exclude_self=True, normalize=True, device="cpu", columns=(10, 40)) < 0.9


def test_row_shards_with_offset_equal_the_full_search():
    rows, _ = _data(230, 8)
    full = knn_exact(rows, rows, 9, exclude_self=True, device="cpu", precision="fp32")
    parts = [
        knn_exact(rows[lo:hi], rows, 9, exclude_self=True, row_offset=lo, device="cpu", precision="fp32")
        for lo, hi in ((0, 77), (77, 150), (150, 230))
    ]
    np.testing.assert_array_equal(np.concatenate([p.indices for p in parts]), full.indices)
    with pytest.raises(ConfigError, match="aligned"):
        knn_exact(rows[:50], rows, 3, exclude_self=True, row_offset=200)


def test_graph_does_not_import_evaluate():
    import subprocess
    import sys

    code = "import sys, hardbatch.graph.knn, hardbatch.graph.threshold; print(any(m.startswith('hardbatch.evaluate') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, True])
def test_a_chunk_size_that_is_not_a_positive_integer_is_refused(chunk_size):
    # 0 used to mean "automatic" silently and a negative one searched nothing.
    from hardbatch.evaluate.search import iter_topk

    x = np.eye(4, dtype=np.float32)
    with pytest.raises(ConfigError, match="chunk_size must be a positive integer"):
        knn_exact(x, x, 1, chunk_size=chunk_size)
    with pytest.raises(ConfigError, match="chunk_size must be a positive integer"):
        list(iter_topk(x, x, 1, chunk_size=chunk_size))


@pytest.mark.parametrize(
    ("dim", "spread", "kind"),
    [(384, 1.0, "mixed"), (37, 30.0, "mixed"), (5, 1e-3, "mixed"), (384, 1.0, "aligned"), (96, 1.0, "exact")],
)
def test_bf16_row_error_bounds_every_bf16_score_against_its_fp32_rescoring(dim, spread, kind):
    """The proof's per-row bound holds entry by entry, on unnormalised vectors of mixed norms, and on the two
    cases that reach its terms: keys along each row's rounding error ("aligned": the input term) and
    bf16-exact vectors with large products ("exact": the output rounding)."""
    from hardbatch.graph.knn import _bf16_key_bounds, _bf16_row_error, _rescore
    from hardbatch.graph.precision import bf16_score_error_bound

    gen = torch.Generator().manual_seed(dim)
    rows = torch.randn(64, dim, generator=gen) * torch.rand(64, 1, generator=gen) * spread
    keys = torch.randn(3000, dim, generator=gen) * torch.rand(3000, 1, generator=gen) * spread
    keys[:64] = rows + 1e-3 * spread * torch.randn(64, dim, generator=gen)  # large, near-equal products
    if kind == "aligned":  # x̂·y − x·y = (x̂ − x)·y at its Cauchy–Schwarz maximum, y exact in bf16
        rounding = rows.bfloat16().float() - rows
        keys = keys.bfloat16().float()  # no key rounding to hide the row's
        keys[:64] = (rounding / rounding.norm(dim=1, keepdim=True)).bfloat16().float()
    elif kind == "exact":
        rows, keys = rows.bfloat16().float(), keys.bfloat16().float()
    rows_low, keys_low = rows.bfloat16(), keys.bfloat16()
    low = (rows_low @ keys_low.T).float()
    exact = _rescore(rows, keys, torch.arange(3000).expand(64, -1).contiguous())
    bounds = _bf16_key_bounds(keys, keys_low)
    # _bf16_row_error takes one bound per row; every entry is checked as that row's bound in turn.
    for column in range(0, 3000, 97):
        error = _bf16_row_error(rows, rows_low, bounds, low[:, column])
        assert bool((exact[:, column] <= low[:, column] + error).all())
        assert bool((exact[:, column] >= low[:, column] - error).all())
    worst = rows.norm(dim=1) * bounds[0] * bf16_score_error_bound(dim)
    assert bool((_bf16_row_error(rows, rows_low, bounds, low[:, 0]) < worst).all())  # tighter than before


def test_window_hardness_is_one_for_exact_windows_and_falls_with_worse_keys():
    from hardbatch.graph.knn import KnnResult, recall_report

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(10, 16)) * 2
    rows = (centres[rng.integers(0, 10, 600)] + rng.normal(size=(600, 16))).astype(np.float32)
    exact = knn_exact(rows, rows, 60, exclude_self=True, device="cpu")
    common = dict(ranges={"w": (10, 30)}, sample=200, exclude_self=True, hardness=(10, 30), device="cpu")
    same = recall_report(exact, rows, rows, **common)
    assert same["w"] == 1.0 and same["hardness"] == pytest.approx(1.0)
    # The window replaced by deeper ranks [40, 60): still harder than random, less hard than exact.
    deeper = exact.indices.copy()
    deeper[:, 10:30] = exact.indices[:, 40:60]
    worse = recall_report(KnnResult(deeper, exact.scores), rows, rows, **common)
    assert worse["w"] == 0.0 and 0.3 < worse["hardness"] < 1.0
    # Random keys instead: no harder than random.
    random = exact.indices.copy()
    random[:, 10:30] = rng.integers(0, 600, size=(600, 20))
    assert abs(recall_report(KnnResult(random, exact.scores), rows, rows, **common)["hardness"]) < 0.15
    # By hand on the sampled rows (float64): the same ratio of mean window scores above the random baseline.
    ids = np.sort(np.random.default_rng(0).permutation(600)[:200])
    x = rows.astype(np.float64)
    score = lambda cols: np.mean([(x[i] @ x[c].T).mean() for i, c in zip(ids, cols[ids])])  # noqa: E731
    rand = np.random.default_rng([0, 0x4A2D]).integers(0, 600, size=(200, 64))
    baseline = np.mean([(x[i] @ x[c].T).mean() for i, c in zip(ids, rand)])
    expected = (score(deeper[:, 10:30]) - baseline) / (score(exact.indices[:, 10:30]) - baseline)
    assert worse["hardness"] == pytest.approx(expected, rel=1e-9)
