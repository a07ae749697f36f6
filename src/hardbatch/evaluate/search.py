"""Exact top-k search in chunks, with a deterministic rule for equal scores.

Retrieval evaluation needs, for every query, the ``k`` best corpus rows. Computing the full
queries × corpus score matrix needs O(Q·N) memory (40 GB for 100k × 100k in fp32), so queries are processed
in chunks through :func:`hardbatch.graph.similarity.iter_similarity_blocks`: peak memory is
O(chunk_size × N) for the score block plus O(chunk_size × k) for the results.

**Tie rule.** Results are ordered by score descending and, among equal scores, by corpus index ascending.
The rule also decides *which* documents enter the top k when several share the k-th score: the ones with
the smallest corpus indices. ``torch.topk`` alone is not deterministic on ties, so rows where the k-th
score is shared by more documents than there are slots left are re-selected explicitly.

Time O(Q·N·d) for the products plus O(Q·N) for the selection; memory O(chunk_size·N + Q·k) when results are
collected (:func:`topk_search`) or O(chunk_size·(N + k)) when they are streamed (:func:`iter_topk`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import torch

from hardbatch.graph.similarity import iter_similarity_blocks
from hardbatch.progress import progress

__all__ = ["auto_chunk_size", "iter_topk", "topk_search", "topk_with_ties"]

#: Bytes one score block may take when ``chunk_size`` is left to :func:`auto_chunk_size`.
DEFAULT_BLOCK_BYTES = 256 << 20


def auto_chunk_size(num_queries: int, num_corpus: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """Queries per block so that a score block and its temporaries fit in ``block_bytes``.

    Measured (benchmarks/bench_evaluate.py): the fp32 block plus ``torch.topk``'s value/index buffers and the
    tie masks take ~13-14 bytes per score on CPU; 16 bytes are budgeted.

    Example:
        >>> auto_chunk_size(1_000_000, 1_000_000)
        16
    """
    per_query = max(1, num_corpus) * 16
    return int(max(1, min(num_queries, 4096, block_bytes // per_query)))


def topk_with_ties(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of each row, ordered by score descending then column index ascending.

    Args:
        scores: (rows, N) float tensor without NaN.
        k: 1 <= k <= N.

    Returns:
        ``(values, indices)``: (rows, k) tensors (float, int64) on ``scores.device``.

    Example:
        >>> values, indices = topk_with_ties(torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0]]), k=2)
        >>> indices.tolist()
        [[1, 2]]
    """
    values, indices = torch.topk(scores, k, dim=1, largest=True, sorted=True)
    kth = values[:, -1:]
    # A row is ambiguous when the k-th score is shared by more documents than made it into the top k;
    # only then may topk have picked arbitrary ones among the tied documents.
    tied_total = (scores == kth).sum(dim=1)
    tied_taken = (values == kth).sum(dim=1)
    ambiguous = (tied_total > tied_taken).nonzero().reshape(-1)
    if len(ambiguous):
        sub = scores[ambiguous]
        sub_kth = kth[ambiguous]
        above = sub > sub_kth
        tied = sub == sub_kth
        slots = k - above.sum(dim=1, keepdim=True)
        chosen = above | (tied & (tied.cumsum(dim=1) <= slots))
        columns = chosen.nonzero()[:, 1].reshape(len(ambiguous), k)
        indices[ambiguous] = columns
        values[ambiguous] = sub.gather(1, columns)
    # Order: first by index ascending, then a stable sort by score descending keeps that order on ties.
    indices, by_index = indices.sort(dim=1)
    values = values.gather(1, by_index)
    values, by_score = values.sort(dim=1, descending=True, stable=True)
    return values, indices.gather(1, by_score)


def iter_topk(
    query_emb: np.ndarray | torch.Tensor,
    corpus_emb: np.ndarray | torch.Tensor,
    k: int,
    *,
    chunk_size: int | None = None,
    device: str | torch.device | None = "auto",
    normalize: bool = False,
    show_progress: bool | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Stream ``(start, scores, indices)`` for consecutive query chunks (numpy, (chunk, k') each).

    ``k' = min(k, N)``; scores are dot products (cosine when ``normalize``), float32.
    Memory O(chunk_size × N) on ``device``; see the module docstring for the tie rule.
    """
    num_queries, num_corpus = len(query_emb), len(corpus_emb)
    k = min(int(k), num_corpus)
    chunk = chunk_size or auto_chunk_size(num_queries, num_corpus)
    blocks = iter_similarity_blocks(
        query_emb, corpus_emb, chunk_size=chunk, device=device, normalize=normalize
    )
    total = -(-num_queries // chunk)
    for start, block in progress(blocks, "exact search", total=total, show=show_progress):
        values, indices = topk_with_ties(block, k)
        yield start, values.cpu().numpy(), indices.cpu().numpy()


def _zero_copy_tensor(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Wrap a numpy array (including a read-only memory map) as a CPU tensor without reading or copying it.

    Chunks are then sliced lazily; torch warns about read-only arrays, but they are only ever read here.
    """
    if isinstance(array, torch.Tensor):
        return array
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(array))


def topk_search(
    query_emb: np.ndarray | torch.Tensor,
    corpus_emb: np.ndarray | torch.Tensor,
    k: int,
    *,
    chunk_size: int | None = None,
    device: str | torch.device | None = "auto",
    normalize: bool = False,
    show_progress: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` corpus rows for every query, never materialising the full score matrix.

    Args:
        query_emb: (Q, d) float array or tensor.
        corpus_emb: (N, d) float array or tensor.
        k: results per query (capped at N).
        chunk_size: queries per block (default: :func:`auto_chunk_size`, ~256 MB blocks).
        device: "auto" (CUDA if available) or a torch device.
        normalize: cosine similarity instead of dot product.
        show_progress: progress bar (default: on unless ``HARDBATCH_PROGRESS=0``).

    Returns:
        ``(scores, indices)``: (Q, k) float32 and (Q, k) int64 arrays, ordered by score descending and,
        for equal scores, by corpus index ascending.

    Example:
        >>> q = np.eye(2, dtype=np.float32)
        >>> c = np.array([[0, 1], [1, 0], [1, 0]], dtype=np.float32)
        >>> topk_search(q, c, 2, device="cpu", show_progress=False)[1].tolist()
        [[1, 2], [0, 1]]
    """
    num_queries = len(query_emb)
    k = min(int(k), len(corpus_emb))
    scores = np.empty((num_queries, k), dtype=np.float32)
    indices = np.empty((num_queries, k), dtype=np.int64)
    for start, values, idx in iter_topk(
        query_emb,
        corpus_emb,
        k,
        chunk_size=chunk_size,
        device=device,
        normalize=normalize,
        show_progress=show_progress,
    ):
        scores[start : start + len(values)] = values
        indices[start : start + len(idx)] = idx
    return scores, indices
