"""Thresholded similarity graphs: a global similarity quantile and the binary sparse graph above it.

GCBS (Sachidananda et al., ICML 2023) keeps every (query i, positive j) pair whose cosine similarity lies
above a *global* quantile q of all N_rows × N_keys similarities. Both steps here work block by block through
:func:`hardbatch.graph.similarity.iter_similarity_blocks`, so no N × N matrix is ever allocated:

* :func:`estimate_similarity_quantile` finds the threshold exactly on a sub-matrix of sampled rows ×
  sampled keys (all of them when the matrix has at most ``sample_size`` entries). It keeps only the
  running top ``m = (1 - q) · entries`` values, so memory is O(chunk_size · sampled_keys + m).
* :func:`threshold_graph` streams the full product and keeps the coordinates above the threshold as a
  CSR matrix; memory O(chunk_size · N_keys + nnz).
* :func:`ivf_threshold_graph` is the approximate alternative for large N (faiss ``faiss`` extra): each row
  is compared only with the keys in its ``nprobe`` nearest IVF lists, so the pass costs about
  ``nprobe / nlist`` of the exact one. Every edge it returns is above the threshold; it misses the edges
  whose key sits in an unprobed list (recall measured in ``benchmarks/bench_gcbs.py``).

Time: O(N_rows · N_keys · d) for the graph (the similarity pass dominates every GCBS refresh) and
O(R · C · d) for the quantile on R sampled rows and C sampled keys.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch

from hardbatch.device import resolve_device
from hardbatch.errors import ConfigError
from hardbatch.graph.precision import bf16_score_error_bound, resolve_precision
from hardbatch.graph.similarity import as_tensor, iter_similarity_blocks

__all__ = [
    "DEFAULT_QUANTILE_SAMPLE",
    "degree_for_quantile",
    "estimate_similarity_quantile",
    "ivf_threshold_graph",
    "normalize_rows",
    "quantile_for_degree",
    "threshold_graph",
]

#: Entries of the similarity matrix used to estimate the quantile (about 2 × 10^7: < 1 s on 2 cores).
DEFAULT_QUANTILE_SAMPLE = 20_000_000

#: Largest number of top values the quantile search keeps in memory (the guard against very low q).
_MAX_TAIL = 50_000_000


def normalize_rows(
    array: np.ndarray | torch.Tensor, device: str | torch.device | None = "cpu"
) -> torch.Tensor:
    """L2-normalise the rows of an (N, d) array once, as an fp32 tensor on ``device``.

    Normalising up front lets every later block skip the work (``normalize=False`` downstream).
    """
    if isinstance(array, np.ndarray) and not array.flags.writeable:
        array = np.array(array, dtype=np.float32)  # a read-only memory map: torch cannot wrap it safely
    return torch.nn.functional.normalize(as_tensor(array, resolve_device(device)), dim=1)


def quantile_for_degree(target_degree: float, num_keys: int) -> float:
    """The quantile q whose threshold keeps ``target_degree`` entries per row on average: 1 - degree / N_keys.

    Example:
        >>> quantile_for_degree(64, 64_000)
        0.999
    """
    if not target_degree > 0:
        raise ConfigError(f"target_degree must be positive, got {target_degree!r}")
    if target_degree >= num_keys:
        raise ConfigError(
            f"target_degree={target_degree} must be smaller than the number of keys ({num_keys})"
        )
    return 1.0 - float(target_degree) / float(num_keys)


def degree_for_quantile(quantile: float, num_keys: int) -> float:
    """Average entries per row kept by the threshold at ``quantile``: (1 - q) · N_keys."""
    return (1.0 - float(quantile)) * float(num_keys)


def _check_quantile(quantile: float) -> None:
    if not 0.0 < float(quantile) < 1.0:
        raise ConfigError(f"quantile must lie strictly between 0 and 1, got {quantile!r}")


def estimate_similarity_quantile(
    rows: np.ndarray | torch.Tensor,
    keys: np.ndarray | torch.Tensor,
    quantile: float = 0.999,
    *,
    sample_size: int = DEFAULT_QUANTILE_SAMPLE,
    seed: int = 0,
    chunk_size: int = 2048,
    device: str | torch.device | None = "auto",
    normalize: bool = True,
) -> float:
    """Similarity value t such that a fraction ``1 - quantile`` of all ``rows · keysᵀ`` entries exceed it.

    When the full matrix has at most ``sample_size`` entries the answer is exact; otherwise it is exact on a
    random sub-matrix of ``R ≈ C ≈ √sample_size`` rows and keys (the subsampled quantile the GCBS paper
    recommends when X·Yᵀ does not fit in memory). Sampling both rows and keys keeps the estimate from
    depending on a few "hub" rows.

    Args:
        rows: (N_rows, d) float array (e.g. query embeddings).
        keys: (N_keys, d) float array (e.g. positive embeddings).
        quantile: q in (0, 1); GCBS uses 0.999.
        sample_size: entries of the similarity matrix to look at.
        seed: seed of the row/key sample.
        chunk_size: rows per similarity block.
        device: torch device for the products ("auto": CUDA when available).
        normalize: cosine similarity (L2-normalise both sides first).

    Returns:
        The threshold as a Python float. With ``m = round((1 - q) · entries)``, it is the (m + 1)-th
        largest sampled value, so exactly m sampled entries lie strictly above it (barring ties).

    Time O(R · C · d), memory O(chunk_size · C + m).

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)
        >>> t = estimate_similarity_quantile(x, x, 0.99, device="cpu")
        >>> sims = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T
        >>> int((sims > t).sum()) == round(0.01 * 300 * 300)
        True
    """
    _check_quantile(quantile)
    if sample_size < 1:
        raise ConfigError(f"sample_size must be positive, got {sample_size}")
    n_rows, n_keys = len(rows), len(keys)
    rng = np.random.default_rng([int(seed), 0x9C85])
    if n_rows * n_keys <= sample_size:
        row_ids, key_ids = None, None
    else:
        side = math.isqrt(int(sample_size))
        n_r = min(n_rows, max(side, -(-sample_size // n_keys)))
        n_c = min(n_keys, max(1, sample_size // n_r))
        row_ids = np.sort(rng.choice(n_rows, size=n_r, replace=False))
        key_ids = np.sort(rng.choice(n_keys, size=n_c, replace=False))
    sample_rows = rows if row_ids is None else rows[row_ids]
    sample_keys = keys if key_ids is None else keys[key_ids]
    entries = len(sample_rows) * len(sample_keys)
    tail = round((1.0 - float(quantile)) * entries)
    if tail + 1 > _MAX_TAIL:
        raise ConfigError(
            f"quantile={quantile} keeps {tail} of {entries} sampled entries; use a quantile closer to 1 "
            "(the graph would be far too dense for batching anyway)"
        )
    keep = tail + 1  # the (m + 1)-th largest value is the threshold
    best = torch.empty(0)
    for _, block in iter_similarity_blocks(
        sample_rows, sample_keys, chunk_size=chunk_size, device=device, normalize=normalize
    ):
        flat = block.reshape(-1)
        if flat.numel() > keep:
            flat = torch.topk(flat, keep, sorted=False).values
        best = torch.cat([best.to(flat.device), flat])
        if best.numel() > 4 * keep:  # amortise the merge: re-select only when the buffer is large
            best = torch.topk(best, keep, sorted=False).values
    if best.numel() < keep:
        return float(best.min())
    return float(torch.topk(best, keep, sorted=False).values.min())


def _check_density(edges: int, max_edges: int, threshold: float, max_avg_degree: float) -> None:
    """Stop a graph build before a threshold far too low exhausts memory."""
    if edges > max_edges:
        raise ConfigError(
            f"the graph above threshold {threshold:.4f} has more than {max_avg_degree:g} edges per row on "
            "average; raise the quantile (or lower target_degree)"
        )


def threshold_graph(
    rows: np.ndarray | torch.Tensor,
    keys: np.ndarray | torch.Tensor,
    threshold: float,
    *,
    chunk_size: int = 2048,
    device: str | torch.device | None = "auto",
    normalize: bool = True,
    drop_diagonal: bool = False,
    row_offset: int = 0,
    max_avg_degree: float = 1024.0,
    precision: str = "auto",
    show_progress: bool | None = None,
) -> sp.csr_array:
    """Binary sparse graph of every (i, j) with ``sim(rows[i], keys[j]) > threshold``, built block by block.

    With ``precision="bf16"`` (or ``"auto"`` where bf16 is fast, :mod:`hardbatch.graph.precision`) each block
    is scored in bf16; every entry whose bf16 score is within the rounding-error bound of the threshold is
    re-scored in fp32 and kept only if its fp32 score is above it, so the graph is the fp32 one.

    Args:
        rows: (N_rows, d) float array.
        keys: (N_keys, d) float array.
        threshold: keep entries strictly above this value.
        chunk_size: rows per similarity block (peak extra memory ``chunk_size · N_keys · 4`` bytes).
        device: torch device for the products.
        normalize: cosine similarity (L2-normalise both sides first).
        drop_diagonal: leave out (i, i) entries (a pair's own positive: a self-loop in GCBS).
        row_offset: ``rows`` are rows ``[row_offset, row_offset + N_rows)`` of a larger matrix (one rank's
            shard): the diagonal left out is then ``(i, row_offset + i)``.
        max_avg_degree: stop with a :class:`ConfigError` once the graph exceeds this many edges per row on
            average, before it exhausts memory (a threshold far too low).
        precision: "auto" (bf16 where fast), "fp32" or "bf16" (speed only; the graph is the fp32 one).
        show_progress: progress bar over row blocks.

    Returns:
        (N_rows, N_keys) ``scipy.sparse.csr_array`` of int8 ones, column indices sorted within each row.

    Time O(N_rows · N_keys · d) (+ O(candidates · d) re-scoring in bf16), memory O(chunk_size · N_keys + nnz).

    Example:
        >>> import numpy as np
        >>> x = np.eye(3, dtype=np.float32)
        >>> threshold_graph(x, x, 0.5, device="cpu").toarray().tolist()
        [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    """
    from hardbatch.progress import progress

    n_rows, n_keys = len(rows), len(keys)
    max_edges = int(max_avg_degree * n_rows)
    row_parts: list[np.ndarray] = []
    col_parts: list[np.ndarray] = []
    edges = 0
    dev = resolve_device(device)
    mode = resolve_precision(precision, dev)
    if mode == "bf16":
        blocks = _bf16_hit_blocks(rows, keys, threshold, chunk_size, dev, normalize)
    else:
        blocks = (
            (start, torch.nonzero(block > threshold))
            for start, block in iter_similarity_blocks(
                rows, keys, chunk_size=chunk_size, device=dev, normalize=normalize
            )
        )
    total = -(-n_rows // chunk_size)
    for start, hits in progress(blocks, "threshold graph", total=total, show=show_progress):
        if drop_diagonal and hits.numel():
            hits = hits[hits[:, 0] + (start + row_offset) != hits[:, 1]]
        hits = hits.to("cpu", torch.int32).numpy()
        edges += len(hits)
        _check_density(edges, max_edges, threshold, max_avg_degree)
        row_parts.append(hits[:, 0] + np.int32(start))
        col_parts.append(hits[:, 1])
    row_idx = np.concatenate(row_parts) if row_parts else np.empty(0, np.int32)
    col_idx = np.concatenate(col_parts) if col_parts else np.empty(0, np.int32)
    # Hits come out row-major from nonzero, so the CSR can be assembled without a sort.
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(row_idx, minlength=n_rows), out=indptr[1:])
    data = np.ones(len(col_idx), dtype=np.int8)
    return sp.csr_array((data, col_idx, indptr), shape=(n_rows, n_keys))


def _bf16_hit_blocks(rows, keys, threshold: float, chunk_size: int, dev: torch.device, normalize: bool):
    """Yield ``(start, hits)`` like the fp32 pass, from bf16 blocks plus fp32 re-scoring near the threshold.

    An fp32 score above ``threshold`` has a bf16 score above ``threshold - eps`` (eps: the bound of
    :func:`hardbatch.graph.precision.bf16_score_error_bound` times the norms), so those entries are the only candidates;
    each is re-scored in fp32 and kept when above ``threshold``. Hits stay in row-major order.
    """
    key_t = as_tensor(keys, dev)
    if normalize:
        key_t = torch.nn.functional.normalize(key_t, dim=1)
    key_low = key_t.to(torch.bfloat16)
    key_norm_max = float(key_t.norm(dim=1).max()) if len(key_t) else 0.0
    bound = bf16_score_error_bound(key_t.shape[1]) * key_norm_max
    for start in range(0, len(rows), chunk_size):
        row_t = as_tensor(rows[start : start + chunk_size], dev)
        if normalize:
            row_t = torch.nn.functional.normalize(row_t, dim=1)
        block = row_t.to(torch.bfloat16) @ key_low.T
        # Conservative in fp32: bf16 values are exact in fp32, the lower limit is widened by 0.1 %.
        lower = threshold - 1.001 * (row_t.norm(dim=1) * bound)[:, None]
        candidates = torch.nonzero(block > lower)
        del block
        exact = torch.empty(len(candidates), dtype=torch.float32, device=dev)
        for lo in range(0, len(candidates), 1 << 16):
            pair = candidates[lo : lo + (1 << 16)]
            exact[lo : lo + len(pair)] = (row_t[pair[:, 0]] * key_t[pair[:, 1]]).sum(dim=1)
        yield start, candidates[exact > threshold]


def ivf_threshold_graph(
    rows: np.ndarray | torch.Tensor,
    keys: np.ndarray | torch.Tensor,
    threshold: float,
    *,
    nlist: int | None = None,
    nprobe: int = 32,
    batch_size: int = 8192,
    normalize: bool = True,
    drop_diagonal: bool = False,
    max_avg_degree: float = 1024.0,
    seed: int = 0,
    show_progress: bool | None = None,
) -> sp.csr_array:
    """Approximate :func:`threshold_graph`: faiss IVF range search instead of the full similarity pass.

    Args:
        rows: (N_rows, d) float array.
        keys: (N_keys, d) float array.
        threshold: keep entries strictly above this value (cosine similarity when ``normalize``).
        nlist: IVF lists (default about 4·sqrt(N_keys)).
        nprobe: lists searched per row; recall grows and speed drops with it (``nprobe = nlist`` is exact).
        batch_size: rows per range search call.
        normalize: cosine similarity (L2-normalise both sides first).
        drop_diagonal: leave out (i, i) entries.
        max_avg_degree: stop with a :class:`ConfigError` once the graph exceeds this many edges per row.
        seed: seed of the k-means training sample.
        show_progress: progress bar over row batches.

    Returns:
        (N_rows, N_keys) ``scipy.sparse.csr_array`` of int8 ones, column indices sorted within each row: a
        subset of :func:`threshold_graph`'s edges.

    Time O(N_keys · d · nlist) to build the index plus about O(N_rows · N_keys · d · nprobe / nlist) to
    search; memory O(N_keys · d + nnz). Requires the ``faiss`` extra.

    Example:
        >>> import numpy as np
        >>> x = np.eye(3, dtype=np.float32)
        >>> ivf_threshold_graph(x, x, 0.5, nlist=1).toarray().tolist()
        [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    """
    from hardbatch.graph.knn import _as_faiss_matrix, build_ivf_index
    from hardbatch.progress import progress

    n_rows, n_keys = len(rows), len(keys)
    index = build_ivf_index(_as_faiss_matrix(keys, normalize), nlist=nlist, nprobe=nprobe, seed=seed)
    max_edges = int(max_avg_degree * n_rows)
    row_parts: list[np.ndarray] = []
    col_parts: list[np.ndarray] = []
    edges = 0
    starts = range(0, n_rows, batch_size)
    for start in progress(starts, "threshold graph (ivf)", show=show_progress):
        stop = min(start + batch_size, n_rows)
        limits, _, found = index.range_search(_as_faiss_matrix(rows[start:stop], normalize), float(threshold))
        row_idx = np.repeat(np.arange(start, stop, dtype=np.int32), np.diff(limits.astype(np.int64)))
        col_idx = found.astype(np.int32)
        if drop_diagonal:
            keep = row_idx != col_idx
            row_idx, col_idx = row_idx[keep], col_idx[keep]
        edges += len(col_idx)
        _check_density(edges, max_edges, threshold, max_avg_degree)
        row_parts.append(row_idx)
        col_parts.append(col_idx)
    row_idx = np.concatenate(row_parts) if row_parts else np.empty(0, np.int32)
    col_idx = np.concatenate(col_parts) if col_parts else np.empty(0, np.int32)
    data = np.ones(len(col_idx), dtype=np.int8)
    graph = sp.csr_array((data, (row_idx, col_idx)), shape=(n_rows, n_keys))
    graph.sort_indices()  # range search returns each row's hits in list order, not column order
    return graph
