"""Thresholded similarity graphs: a global similarity quantile and the binary sparse graph above it.

GCBS (Sachidananda et al., ICML 2023) keeps every (query i, positive j) pair whose cosine similarity lies
above a *global* quantile q of all N_rows × N_keys similarities. Both steps here work block by block through
:func:`hardbatch.graph.similarity.iter_similarity_blocks`, so no N × N matrix is ever allocated:

* :func:`estimate_similarity_quantile` finds the threshold exactly on a sub-matrix of sampled rows ×
  sampled keys (all of them when the matrix has at most ``sample_size`` entries). It keeps only the
  running top ``m = (1 - q) · entries`` values, so memory is O(chunk_size · sampled_keys + m).
* :func:`threshold_graph` streams the full product and keeps the coordinates above the threshold as a
  CSR matrix; memory O(N_keys · d + chunk_size · N_keys + nnz). With ``key_block_size=B`` the keys are read
  B at a time (a memory-mapped ``.npy`` is never resident whole) and the CSR is the unblocked one:
  O(B · d + chunk_size · B + nnz) (:func:`threshold_working_set` gives the bound in bytes, and
  ``memory_budget`` picks B from it, :mod:`hardbatch.graph.budget`).
* :func:`ivf_threshold_graph` is the approximate alternative for large N (faiss ``faiss`` extra): each row
  is compared only with the keys in its ``nprobe`` nearest IVF lists, so the pass costs about
  ``nprobe / nlist`` of the exact one. Every edge it returns is above the threshold; it misses the edges
  whose key sits in an unprobed list (recall measured in ``benchmarks/bench_gcbs.py``).

Time: O(N_rows · N_keys · d) for the graph (the similarity pass dominates every GCBS refresh) and
O(R · C · d) for the quantile on R sampled rows and C sampled keys.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import scipy.sparse as sp
import torch

from hardbatch.device import resolve_device
from hardbatch.errors import ConfigError
from hardbatch.graph.precision import bf16_score_error_bound, resolve_precision
from hardbatch.graph.similarity import ScoreBuffer, as_tensor, block_scores, iter_similarity_blocks
from hardbatch.validation import check_chunk_size

__all__ = [
    "DEFAULT_QUANTILE_SAMPLE",
    "DenseGraphError",
    "degree_for_quantile",
    "estimate_similarity_quantile",
    "ivf_threshold_graph",
    "normalize_rows",
    "quantile_for_degree",
    "threshold_graph",
    "threshold_key_block",
    "threshold_working_set",
]

#: Entries of the similarity matrix used to estimate the quantile (about 2 × 10^7: < 1 s on 2 cores).
DEFAULT_QUANTILE_SAMPLE = 20_000_000

#: Bytes of one gathered piece of candidate rows (or keys) re-scored in fp32 in bf16 mode.
_RESCORE_PIECE_BYTES = 16 << 20

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
        sample_rows,
        sample_keys,
        chunk_size=chunk_size,
        device=device,
        normalize=normalize,
        reuse_storage=True,
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


class DenseGraphError(ConfigError):
    """The graph above the threshold has more than ``max_avg_degree`` edges per row (a threshold too low)."""


def _check_density(edges: int, max_edges: int, threshold: float, max_avg_degree: float) -> None:
    """Stop a graph build before a threshold far too low exhausts memory."""
    if edges > max_edges:
        raise DenseGraphError(
            f"the graph above threshold {threshold:.4f} has more than {max_avg_degree:g} edges per row on "
            "average; raise the quantile (or lower target_degree)"
        )


def threshold_working_set(
    key_block: int, dim: int, chunk_size: int, precision: str = "fp32", normalize: bool = True
) -> int:
    """Upper bound in bytes of what :func:`threshold_graph` holds with key blocks of ``key_block`` keys.

    With B = ``key_block``, c = ``chunk_size`` and d = ``dim``::

        keys    8·B·d   (the fp32 block and its normalised copy while it is made; 4·B·d unnormalised)
                + 2·B·d (its bf16 copy, bf16 mode)
        rows    8·c·d   (a row block and its normalised copy)
        scores  16·c·B  (the score block, its comparison mask and what the allocator keeps of the
                         previous block's: measured 5.7-15 bytes per score on CPU, the smaller blocks the
                         worse)
        bf16    + 48 MiB (three 16 MiB pieces of gathered candidate pairs being re-scored)

    Calibrated on a 2-core CPU (peak anonymous memory growth of the pass, memory-mapped inputs): 0.3-0.9
    of this bound. The edges found (8 bytes each while collected, ~5 in the CSR) come on top: the graph
    is the stage's output, about (1 - q)·N_rows·N_keys edges.

    Example:
        >>> threshold_working_set(10_000, 384, 2048) / 2**20
        347.796875
    """
    key_bytes = 8 if normalize else 4
    total = key_block * dim * key_bytes + chunk_size * dim * 8 + 16 * chunk_size * key_block
    if precision == "bf16":
        total += 2 * key_block * dim + 3 * _RESCORE_PIECE_BYTES
    return int(total)


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
    key_block_size: int | str | None = None,
    memory_budget: int | str | None = None,
    show_progress: bool | None = None,
) -> sp.csr_array:
    """Binary sparse graph of every (i, j) with ``sim(rows[i], keys[j]) > threshold``, built block by block.

    With ``precision="bf16"`` (or ``"auto"`` where bf16 is fast, :mod:`hardbatch.graph.precision`) each block
    is scored in bf16; every entry whose bf16 score is within the rounding-error bound of the threshold is
    re-scored in fp32 and kept only if its fp32 score is above it, so the graph is the fp32 one.

    **Key blocks** (``key_block_size=B``): the keys are read B at a time from whatever array was given (a
    memory-mapped ``.npy`` is never loaded whole), once, and only one block is resident; the rows are read
    ``chunk_size`` at a time once per key block (key blocks are the outer loop, as in
    :func:`hardbatch.graph.knn.knn_exact`). Each (row block, key block) pair is thresholded like the whole
    matrix (in bf16 mode the rounding bound uses that block's largest key norm); the diagonal and
    ``row_offset`` are placed by global key index, and the hits of all blocks are put in row-major order by a
    stable sort on the row (each block's hits are already row-major with ascending columns, so the CSR is the
    unblocked one). The density cap counts edges across blocks, so it stops exactly when the whole graph would
    exceed it. Every entry is decided on the fp32 score of its (row, key) pair: the graph equals the unblocked
    one whenever the matmul gives a pair the same bits in either block width (always for exact products;
    measured true with MKL for d <= 768, see docs/b3.md), and in bf16 mode always (the re-scoring does not
    depend on the block). ``key_block_size="auto"`` with ``memory_budget`` (or the budget alone) picks the
    largest B whose :func:`threshold_working_set` fits (:mod:`hardbatch.graph.budget`).

    Args:
        rows: (N_rows, d) float array (numpy, memory-mapped numpy or torch).
        keys: (N_keys, d) float array. Resident on ``device`` without key blocks; with them read B rows at a
            time.
        threshold: keep entries strictly above this value.
        chunk_size: rows per similarity block (extra memory up to ``16 · chunk_size · B`` bytes).
        device: torch device for the products.
        normalize: cosine similarity (L2-normalise both sides first, block by block).
        drop_diagonal: leave out (i, i) entries (a pair's own positive: a self-loop in GCBS).
        row_offset: ``rows`` are rows ``[row_offset, row_offset + N_rows)`` of a larger matrix (one rank's
            shard): the diagonal left out is then ``(i, row_offset + i)``.
        max_avg_degree: stop with a :class:`ConfigError` once the graph exceeds this many edges per row on
            average, before it exhausts memory (a threshold far too low).
        precision: "auto" (bf16 where fast), "fp32" or "bf16" (speed only; the graph is the fp32 one).
        key_block_size: keys resident at a time (None: all; "auto": chosen from ``memory_budget``).
        memory_budget: bytes (or "4GiB") for the key block, the row block and the score block.
        show_progress: progress bar over (key block, row block) pairs.

    Returns:
        (N_rows, N_keys) ``scipy.sparse.csr_array`` of int8 ones, column indices sorted within each row.

    Raises:
        DenseGraphError: (a ConfigError) a graph denser than ``max_avg_degree``.
        ConfigError: bad key-block options, a budget too small for the smallest key block.

    Time O(N_rows · N_keys · d) (+ O(candidates · d) re-scoring in bf16, + O(nnz · log(N_keys / B)) for the
    merge of key blocks); memory O(B · d + chunk_size · B) (:func:`threshold_working_set`) + O(nnz), with
    B = N_keys without key blocks; reads the keys once and the rows ceil(N_keys / B) times.

    Example:
        >>> import numpy as np
        >>> x = np.eye(3, dtype=np.float32)
        >>> threshold_graph(x, x, 0.5, device="cpu").toarray().tolist()
        [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
        >>> threshold_graph(x, x, 0.5, device="cpu", key_block_size=2, drop_diagonal=True).nnz
        0
    """
    from hardbatch.progress import progress

    n_rows, n_keys = len(rows), len(keys)
    dev = resolve_device(device)
    mode = resolve_precision(precision, dev)
    block_keys = threshold_key_block(key_block_size, memory_budget, keys, chunk_size, mode, normalize)
    block_keys = max(1, min(block_keys or n_keys, n_keys))
    max_edges = int(max_avg_degree * n_rows)
    row_parts: list[np.ndarray] = []
    col_parts: list[np.ndarray] = []
    edges = 0
    key_starts = range(0, n_keys, block_keys)
    row_starts = range(0, n_rows, chunk_size)
    steps = itertools.product(key_starts, row_starts)  # key blocks outside: each is read once
    loaded, key_t, key_low, bound = -1, None, None, 0.0
    total = len(key_starts) * len(row_starts)
    buffer = ScoreBuffer()  # one score block's storage for every (row block, key block) pair
    for key_lo, start in progress(steps, "threshold graph", total=total, show=show_progress):
        if key_lo != loaded:
            key_t = key_low = None  # the previous block is freed before the next one is read
            key_t, key_low, bound = _key_block(
                keys, key_lo, block_keys, len(key_starts) == 1, dev, normalize, mode
            )
            loaded = key_lo
        row_t = as_tensor(rows[start : start + chunk_size], dev)
        if normalize:
            row_t = torch.nn.functional.normalize(row_t, dim=1)
        if key_low is None:
            hits = torch.nonzero(block_scores(row_t, key_t, buffer) > threshold)
        else:
            hits = _bf16_hits(row_t, key_t, key_low, bound, threshold, buffer)
        if drop_diagonal and hits.numel():
            hits = hits[hits[:, 0] + (start + row_offset - key_lo) != hits[:, 1]]
        hits = hits.to("cpu", torch.int32).numpy()
        edges += len(hits)
        _check_density(edges, max_edges, threshold, max_avg_degree)
        row_parts.append(hits[:, 0] + np.int32(start))
        col_parts.append(hits[:, 1] + np.int32(key_lo))
    row_idx = np.concatenate(row_parts) if row_parts else np.empty(0, np.int32)
    col_idx = np.concatenate(col_parts) if col_parts else np.empty(0, np.int32)
    if len(key_starts) > 1:
        # Key block by key block, each block row-major with ascending columns: a stable sort on the row gives
        # the unblocked order (timsort merges the per-block runs, O(nnz · log blocks)).
        order = np.argsort(row_idx, kind="stable")
        row_idx, col_idx = row_idx[order], col_idx[order]
        del order
    # Hits come out row-major from nonzero (or from the merge above), so the CSR needs no further sort.
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(row_idx, minlength=n_rows), out=indptr[1:])
    data = np.ones(len(col_idx), dtype=np.int8)
    return sp.csr_array((data, col_idx, indptr), shape=(n_rows, n_keys))


def threshold_key_block(
    key_block_size: int | str | None,
    memory_budget: int | str | None,
    keys: np.ndarray | torch.Tensor | tuple[int, int],
    chunk_size: int,
    precision: str,
    normalize: bool = True,
) -> int | None:
    """The key block :func:`threshold_graph` runs with: None (all keys), the given one, or the budget's.

    With ``memory_budget`` it is the largest block whose :func:`threshold_working_set` fits
    (``precision``: "fp32" or "bf16", as resolved for the device). ``keys`` is the (N_keys, d) key array or
    just its shape ``(N_keys, d)`` (to check a budget before the keys exist).

    Raises:
        ConfigError: bad options, or a budget too small for the smallest block.

    Example:
        >>> import numpy as np
        >>> threshold_key_block(None, threshold_working_set(1000, 8, 64), np.ones((5000, 8)), 64, "fp32")
        1000
    """
    from hardbatch.graph.budget import key_shape, resolve_key_block_size

    check_chunk_size(chunk_size)
    num_keys, dim = key_shape(keys)
    return resolve_key_block_size(
        key_block_size, memory_budget, num_keys,
        lambda b: threshold_working_set(b, dim, chunk_size, precision, normalize),
        f"the threshold graph ({precision})",
    )  # fmt: skip


def _key_block(
    keys, lo: int, size: int, whole: bool, dev: torch.device, normalize: bool, mode: str
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Keys ``[lo, lo + size)`` as (fp32 tensor, bf16 copy or None, bf16 score bound per unit row norm)."""
    key_t = as_tensor(keys if whole else keys[lo : lo + size], dev)
    if normalize:
        key_t = torch.nn.functional.normalize(key_t, dim=1)
    if mode != "bf16":
        return key_t, None, 0.0
    key_norm_max = float(key_t.norm(dim=1).max()) if len(key_t) else 0.0
    return key_t, key_t.to(torch.bfloat16), bf16_score_error_bound(key_t.shape[1]) * key_norm_max


def _bf16_hits(
    row_t: torch.Tensor,
    key_t: torch.Tensor,
    key_low: torch.Tensor,
    bound: float,
    threshold: float,
    buffer: ScoreBuffer | None = None,
    key_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """(hits, 2) block coordinates above ``threshold`` in fp32, from a bf16 block plus fp32 re-scoring.

    An fp32 score above ``threshold`` has a bf16 score above ``threshold - eps`` (eps: ``bound``, the error
    bound of :func:`hardbatch.graph.precision.bf16_score_error_bound` times the block's largest key norm,
    times the row norm), so those entries are the only candidates; each is re-scored in fp32 (a per-pair
    product that does not depend on the block) and kept when above ``threshold``. Hits stay row-major.
    ``key_ids`` (C,): ``key_low``'s rows are ``key_t[key_ids]`` (a gathered block; ``key_t`` holds all keys),
    else ``key_low`` is ``key_t`` in bf16.
    """
    row_low = row_t.to(torch.bfloat16)
    block = row_low @ key_low.T if buffer is None else buffer.product(row_low, key_low)
    # Conservative in fp32: bf16 values are exact in fp32, the lower limit is widened by 0.1 %.
    lower = threshold - 1.001 * (row_t.norm(dim=1) * bound)[:, None]
    candidates = torch.nonzero(block > lower)
    del block
    exact = torch.empty(len(candidates), dtype=torch.float32, device=row_t.device)
    step = max(1, _RESCORE_PIECE_BYTES // (4 * max(1, row_t.shape[1])))  # pairs per 16 MiB gathered piece
    for lo in range(0, len(candidates), step):
        pair = candidates[lo : lo + step]
        columns = pair[:, 1] if key_ids is None else key_ids[pair[:, 1]]
        exact[lo : lo + len(pair)] = (row_t[pair[:, 0]] * key_t[columns]).sum(dim=1)
    return candidates[exact > threshold]


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
