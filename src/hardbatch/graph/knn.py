"""k-nearest-neighbour search by inner product: exact (chunked torch) or approximate (faiss).

Every hardbatch stage that needs "the k most similar keys of each row" (B3's teacher ranking, GCBS'
thresholded graph, hard-negative mining) goes through :func:`knn`. ``rows`` and ``keys`` may be different
matrices (B3 ranks *positives* against *queries*); with ``exclude_self=True`` they must be aligned (row i and
key i describe the same example) and key i is never returned for row i.

Backends:

* ``"exact"`` (default): :func:`hardbatch.graph.similarity.iter_similarity_blocks` + ``topk_with_ties`` on the
  best available device. Time O(N_rows · N_keys · d), memory O(chunk · N_keys) for the block plus
  O(N_rows · k) for the result. On a 2-core CPU, 100k × 100k × 384 takes about a minute; on a GPU seconds.
* ``"hnsw"``: faiss ``IndexHNSWFlat`` (inner product). Build O(N_keys · M · log N_keys), search
  O(N_rows · ef · log N_keys); memory O(N_keys · (d + M)).
* ``"ivf"``: faiss ``IndexIVFFlat`` (inner product), ``nlist`` ≈ 4·sqrt(N) lists, ``nprobe`` probed per
  query. Train O(sample · nlist · d), search O(N_rows · nprobe · N_keys / nlist · d).

Approximate backends miss some true neighbours; :func:`knn_recall` measures recall@k against the exact
answer on a random sample of rows so the loss of quality is reported, never guessed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from hardbatch.device import resolve_device
from hardbatch.errors import ConfigError
from hardbatch.evaluate.search import topk_with_ties
from hardbatch.graph.similarity import as_tensor, iter_similarity_blocks
from hardbatch.progress import progress

__all__ = ["KnnBackend", "KnnResult", "build_ivf_index", "knn", "knn_exact", "knn_faiss", "knn_recall"]

KnnBackend = Literal["exact", "hnsw", "ivf"]

#: Extra memory the exact backend may use for one similarity block (bytes), when chunk_size is automatic.
_BLOCK_BUDGET_BYTES = 256 << 20


@dataclass
class KnnResult:
    """Neighbours of every row, best first.

    Attributes:
        indices: (N_rows, k) int32 key indices, sorted by decreasing score.
        scores: (N_rows, k) float32 inner products matching ``indices``.
    """

    indices: np.ndarray
    scores: np.ndarray

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])


def _check_k(k: int, num_keys: int, exclude_self: bool) -> None:
    available = num_keys - 1 if exclude_self else num_keys
    if not isinstance(k, int | np.integer) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    if k > available:
        raise ConfigError(
            f"k={k} neighbours requested but only {available} keys are available"
            + (" (excluding each row itself)" if exclude_self else "")
        )


def _auto_chunk(num_keys: int) -> int:
    return int(max(16, min(8192, _BLOCK_BUDGET_BYTES // max(1, 4 * num_keys))))


def knn_exact(
    rows: np.ndarray | torch.Tensor,
    keys: np.ndarray | torch.Tensor,
    k: int,
    *,
    exclude_self: bool = False,
    chunk_size: int | None = None,
    device: str | torch.device | None = "auto",
    normalize: bool = False,
    show_progress: bool | None = None,
) -> KnnResult:
    """Exact top-``k`` keys of every row by inner product, computed block by block.

    Args:
        rows: (N_rows, d) float array (numpy, memory-mapped numpy or torch).
        keys: (N_keys, d) float array, kept resident on ``device``.
        k: neighbours per row (``k <= N_keys``, or ``N_keys - 1`` with ``exclude_self``).
        exclude_self: rows and keys are aligned (``N_rows == N_keys``); never return key i for row i.
        chunk_size: rows per block (default: as many as fit in 256 MiB of scores).
        device: "auto" (CUDA when available), or any torch device.
        normalize: L2-normalise rows and keys first (cosine similarity).
        show_progress: progress bar (default: on unless ``HARDBATCH_PROGRESS=0``).

    Returns:
        :class:`KnnResult` with (N_rows, k) int32 indices and float32 scores, best first; equal scores
        are ordered (and, at the k-th place, chosen) by ascending key index, on every device.

    Complexity: time O(N_rows · N_keys · d + N_rows · N_keys · log k); memory O(chunk · N_keys + N_rows · k).

    Example:
        >>> import numpy as np
        >>> x = np.eye(4, dtype=np.float32) + 0.1
        >>> knn_exact(x, x, 1, exclude_self=True).indices.shape
        (4, 1)
    """
    num_rows, num_keys = len(rows), len(keys)
    if exclude_self and num_rows != num_keys:
        raise ConfigError(
            f"exclude_self needs aligned rows and keys, got {num_rows} rows and {num_keys} keys"
        )
    _check_k(k, num_keys, exclude_self)
    chunk = chunk_size or _auto_chunk(num_keys)
    indices = np.empty((num_rows, k), dtype=np.int32)
    scores = np.empty((num_rows, k), dtype=np.float32)
    blocks = iter_similarity_blocks(rows, keys, chunk_size=chunk, device=device, normalize=normalize)
    for start, block in progress(
        blocks, "kNN (exact)", total=math.ceil(num_rows / chunk), show=show_progress
    ):
        if exclude_self:
            # Mask the diagonal of this block so an example is never its own neighbour.
            local = torch.arange(block.shape[0], device=block.device)
            block[local, local + start] = float("-inf")
        # Deterministic on ties (score descending, then key index), so every device gives the same ranks.
        values, top = topk_with_ties(block, k)
        stop = start + block.shape[0]
        indices[start:stop] = top.to(torch.int32).cpu().numpy()
        scores[start:stop] = values.cpu().numpy()
    return KnnResult(indices=indices, scores=scores)


def _as_faiss_matrix(array: np.ndarray | torch.Tensor, normalize: bool) -> np.ndarray:
    matrix = as_tensor(array, torch.device("cpu")).numpy()
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if normalize:
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        matrix = matrix / np.maximum(norms, 1e-12)
    return matrix


def _drop_self(
    indices: np.ndarray, scores: np.ndarray, row_ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """From k+1 candidates per row, remove the row's own id (or the last candidate when absent)."""
    is_self = indices == row_ids[:, None]
    # Rows that do not contain themselves drop their worst candidate instead.
    missing = ~is_self.any(axis=1)
    is_self[missing, -1] = True
    keep = ~is_self
    # Exactly k True per row, so a boolean gather keeps the order and reshapes cleanly.
    return indices[keep].reshape(-1, k), scores[keep].reshape(-1, k)


def build_ivf_index(key_matrix: np.ndarray, *, nlist: int | None, nprobe: int, seed: int = 0):
    """A trained, filled faiss ``IndexIVFFlat`` (inner product) over contiguous fp32 ``key_matrix``.

    ``nlist`` defaults to about 4·sqrt(N) lists (at least 39 keys per list, faiss's training minimum);
    k-means trains on at most max(256·nlist, 10,000) sampled keys. ``nprobe`` lists are probed per query.
    Build time O(N · d · nlist) for the assignment plus the k-means iterations on the sample.
    """
    from hardbatch.errors import require

    faiss = require("faiss", "faiss", "IVF indexes")
    num_keys, dim = key_matrix.shape
    lists = nlist or int(4 * math.sqrt(num_keys))
    lists = max(1, min(lists, num_keys // 39 or 1))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = int(seed)
    train_rows = np.random.default_rng(seed).permutation(num_keys)[: max(lists * 256, 10_000)]
    index.train(key_matrix[np.sort(train_rows)])
    index.add(key_matrix)
    index.nprobe = int(min(nprobe, lists))
    return index


def knn_faiss(
    rows: np.ndarray | torch.Tensor,
    keys: np.ndarray | torch.Tensor,
    k: int,
    *,
    index: Literal["hnsw", "ivf"] = "hnsw",
    exclude_self: bool = False,
    normalize: bool = False,
    hnsw_m: int = 32,
    ef_construction: int = 64,
    ef_search: int | None = None,
    nlist: int | None = None,
    nprobe: int = 16,
    batch_size: int = 16384,
    seed: int = 0,
    show_progress: bool | None = None,
) -> KnnResult:
    """Approximate top-``k`` keys of every row by inner product with a faiss HNSW or IVF index (CPU).

    Args:
        rows: (N_rows, d) float array.
        keys: (N_keys, d) float array (indexed).
        k: neighbours per row.
        index: "hnsw" (``IndexHNSWFlat``, no training) or "ivf" (``IndexIVFFlat``, k-means trained).
        exclude_self: rows and keys are aligned; never return key i for row i (searches k+1).
        normalize: L2-normalise first (cosine similarity).
        hnsw_m: HNSW graph degree M.
        ef_construction: HNSW build beam.
        ef_search: HNSW search beam (default ``max(2·k, 64)``; must be >= k).
        nlist: IVF lists (default ``4·sqrt(N_keys)``, at most N_keys / 39 so k-means has data).
        nprobe: IVF lists probed per query.
        batch_size: rows per search call (bounds the temporary distance buffers).
        seed: k-means seed of the IVF training.
        show_progress: progress bar over search batches.

    Returns:
        :class:`KnnResult` (int32 indices, float32 scores), best first; rare rows with fewer than k hits
        found by the index are padded with index -1 and score -inf.

    Complexity: see the module docstring. Requires the ``faiss`` extra.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
        >>> knn_faiss(x, x, 5, exclude_self=True).indices.shape
        (200, 5)
    """
    from hardbatch.errors import require

    faiss = require("faiss", "faiss", "approximate kNN")
    num_rows, num_keys = len(rows), len(keys)
    if exclude_self and num_rows != num_keys:
        raise ConfigError(
            f"exclude_self needs aligned rows and keys, got {num_rows} rows and {num_keys} keys"
        )
    _check_k(k, num_keys, exclude_self)
    key_matrix = _as_faiss_matrix(keys, normalize)
    dim = key_matrix.shape[1]
    search_k = k + 1 if exclude_self else k
    if index == "hnsw":
        faiss_index = faiss.IndexHNSWFlat(dim, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        faiss_index.hnsw.efConstruction = int(ef_construction)
        faiss_index.add(key_matrix)
        faiss_index.hnsw.efSearch = int(max(ef_search or max(2 * search_k, 64), search_k))
    elif index == "ivf":
        faiss_index = build_ivf_index(key_matrix, nlist=nlist, nprobe=nprobe, seed=seed)
    else:
        raise ConfigError(f"unknown faiss index {index!r}; expected 'hnsw' or 'ivf'")
    indices = np.empty((num_rows, k), dtype=np.int32)
    scores = np.empty((num_rows, k), dtype=np.float32)
    starts = range(0, num_rows, batch_size)
    for start in progress(starts, f"kNN ({index})", show=show_progress):
        stop = min(start + batch_size, num_rows)
        query = _as_faiss_matrix(rows[start:stop], normalize)
        found_scores, found = faiss_index.search(query, search_k)
        found_scores = np.where(found < 0, -np.inf, found_scores).astype(np.float32)
        if exclude_self:
            found, found_scores = _drop_self(found, found_scores, np.arange(start, stop), k)
        indices[start:stop] = found
        scores[start:stop] = found_scores
    return KnnResult(indices=indices, scores=scores)


def knn(
    rows: np.ndarray | torch.Tensor,
    keys: np.ndarray | torch.Tensor,
    k: int,
    *,
    backend: KnnBackend = "exact",
    exclude_self: bool = False,
    normalize: bool = False,
    device: str | torch.device | None = "auto",
    chunk_size: int | None = None,
    show_progress: bool | None = None,
    **faiss_options: int,
) -> KnnResult:
    """Top-``k`` keys of every row by inner product with the chosen backend.

    Args:
        rows: (N_rows, d) float array.
        keys: (N_keys, d) float array.
        k: neighbours per row.
        backend: "exact" (chunked torch matmul, GPU when present), "hnsw" or "ivf" (faiss, approximate).
        exclude_self: rows and keys are aligned; row i never gets key i.
        normalize: L2-normalise first.
        device: device of the exact backend.
        chunk_size: rows per block of the exact backend.
        show_progress: progress bar.
        **faiss_options: passed to :func:`knn_faiss` (``hnsw_m``, ``ef_search``, ``nlist``, ``nprobe``...).

    Returns:
        :class:`KnnResult`.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
        >>> knn(x, x, 3, exclude_self=True).k
        3
    """
    if backend == "exact":
        if faiss_options:
            raise ConfigError(f"options {sorted(faiss_options)} only apply to the faiss backends")
        return knn_exact(
            rows,
            keys,
            k,
            exclude_self=exclude_self,
            chunk_size=chunk_size,
            device=device,
            normalize=normalize,
            show_progress=show_progress,
        )
    if backend in ("hnsw", "ivf"):
        return knn_faiss(
            rows,
            keys,
            k,
            index=backend,
            exclude_self=exclude_self,
            normalize=normalize,
            show_progress=show_progress,
            **faiss_options,
        )
    raise ConfigError(f"unknown kNN backend {backend!r}; expected 'exact', 'hnsw' or 'ivf'")


def knn_recall(
    approx: KnnResult,
    rows: np.ndarray | torch.Tensor,
    keys: np.ndarray | torch.Tensor,
    *,
    sample: int = 1000,
    exclude_self: bool = False,
    normalize: bool = False,
    seed: int = 0,
    device: str | torch.device | None = "auto",
) -> float:
    """Recall@k of an approximate result against exact search, measured on a random sample of rows.

    Args:
        approx: result of an approximate search over the same ``rows``/``keys``.
        rows: (N_rows, d) float array.
        keys: (N_keys, d) float array.
        sample: rows to check (all when fewer); cost O(sample · N_keys · d).
        exclude_self: as used for ``approx``.
        normalize: as used for ``approx``.
        seed: which rows are sampled.
        device: device of the exact check.

    Returns:
        Mean over sampled rows of |approx ∩ exact| / k, in [0, 1].

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
        >>> knn_recall(knn_exact(x, x, 5), x, x)
        1.0
    """
    num_rows, k = approx.indices.shape
    chosen = np.sort(np.random.default_rng(seed).permutation(num_rows)[: min(sample, num_rows)])
    dev = resolve_device(device)
    key_t = as_tensor(keys, dev)
    row_t = as_tensor(np.asarray(rows[chosen]) if not isinstance(rows, torch.Tensor) else rows[chosen], dev)
    if normalize:
        key_t = torch.nn.functional.normalize(key_t, dim=1)
        row_t = torch.nn.functional.normalize(row_t, dim=1)
    hits = 0
    for start in range(0, len(chosen), 1024):
        block = row_t[start : start + 1024] @ key_t.T
        if exclude_self:
            ids = torch.as_tensor(chosen[start : start + 1024], device=dev)
            block[torch.arange(len(ids), device=dev), ids] = float("-inf")
        exact = topk_with_ties(block, k)[1].cpu().numpy()
        found = approx.indices[chosen[start : start + 1024]]
        # Count, per row, approximate ids that are also exact ids (both sets have k distinct ids).
        hits += int((found[:, :, None] == exact[:, None, :]).any(axis=2).sum())
    return hits / (len(chosen) * k)
