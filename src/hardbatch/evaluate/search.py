"""Exact top-k search in chunks, with a deterministic rule for equal scores.

Retrieval evaluation needs, for every query, the ``k`` best corpus rows. Computing the full
queries × corpus score matrix needs O(Q·N) memory (40 GB for 100k × 100k in fp32), so queries are processed
in chunks through :func:`hardbatch.graph.similarity.iter_similarity_blocks`: peak memory is
O(chunk_size × N) for the score block plus O(chunk_size × k) for the results.

**Tie rule** (:mod:`hardbatch.graph.topk`, shared with every kNN in hardbatch). Results are ordered by
score descending and, among equal scores, by corpus index ascending; among documents sharing the k-th score,
the ones with the smallest corpus indices enter the top k.

Time O(Q·N·d) for the products plus O(Q·N) for the selection; memory O(chunk_size·N + Q·k) when results are
collected (:func:`topk_search`) or O(chunk_size·(N + k)) when they are streamed (:func:`iter_topk`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from hardbatch.graph.similarity import iter_similarity_blocks
from hardbatch.graph.topk import DEFAULT_BLOCK_BYTES, auto_chunk_size, select_topk, topk_with_ties
from hardbatch.progress import progress
from hardbatch.validation import check_chunk_size

__all__ = ["DEFAULT_BLOCK_BYTES", "auto_chunk_size", "iter_topk", "topk_search", "topk_with_ties"]


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
    check_chunk_size(chunk_size)
    chunk = chunk_size or auto_chunk_size(num_queries, num_corpus)
    blocks = iter_similarity_blocks(
        query_emb, corpus_emb, chunk_size=chunk, device=device, normalize=normalize, reuse_storage=True
    )
    total = -(-num_queries // chunk)
    for start, block in progress(blocks, "exact search", total=total, show=show_progress):
        values, indices = select_topk(block, k)
        yield start, values.cpu().numpy(), indices.cpu().numpy()


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
