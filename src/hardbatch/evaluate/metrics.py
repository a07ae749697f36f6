"""Retrieval metrics (nDCG@k, MRR@k, Recall@k, MAP@k, Precision@k) from chunked exact search.

Definitions follow trec_eval (and therefore pytrec_eval / BEIR), which the tests check against:

* a document is relevant when its grade is > 0; ``R`` = number of relevant documents of the query;
* ``ndcg@k`` = DCG@k / IDCG@k with gain = grade and discount 1 / log2(rank + 1) (trec_eval ``ndcg_cut``);
  IDCG uses the query's best ``k`` grades;
* ``mrr@k`` = 1 / rank of the first relevant document within the top k, else 0;
* ``recall@k`` = relevant documents in the top k / R;
* ``map@k`` = sum over relevant documents at rank r <= k of precision@r, divided by R (trec_eval
  ``map_cut``; sentence-transformers divides by min(k, R) instead, which differs only when R > k);
* ``precision@k`` = relevant documents in the top k / k.

Rankings are by score descending, ties broken by corpus index ascending (see
:mod:`hardbatch.evaluate.search`). Queries without any relevant document are left out of the averages
(counted in :attr:`RetrievalResult.num_skipped`), as BEIR does.

Time O(Q·N·d); memory O(chunk_size·N) for the score block plus O(Q) per metric: per-query results are
computed chunk by chunk and the top-k lists are never stored for all queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from hardbatch.errors import ConfigError, DataError
from hardbatch.evaluate.relevance import relevance_matrix
from hardbatch.evaluate.search import iter_topk
from hardbatch.validation import check_embeddings

__all__ = ["DEFAULT_KS", "RetrievalResult", "retrieval_metrics", "retrieval_scores"]

#: Default cut-offs: metric name -> ks.
DEFAULT_KS: dict[str, tuple[int, ...]] = {
    "ndcg": (10,),
    "mrr": (10,),
    "recall": (1, 10, 100),
    "map": (100,),
}
_METRICS = ("ndcg", "mrr", "recall", "map", "precision")


@dataclass
class RetrievalResult:
    """Per-query values and averages of a retrieval evaluation.

    Attributes:
        metrics: ``{"ndcg@10": mean, ...}`` averaged over evaluated queries.
        per_query: ``{"ndcg@10": (Q,) float64 array}``; NaN for queries without relevant documents.
        num_queries: Q.
        num_corpus: N.
        num_skipped: queries left out because they have no relevant document.
    """

    metrics: dict[str, float]
    per_query: dict[str, np.ndarray] = field(repr=False)
    num_queries: int
    num_corpus: int
    num_skipped: int


def retrieval_metrics(
    query_emb: np.ndarray | torch.Tensor,
    corpus_emb: np.ndarray | torch.Tensor,
    relevant: Any = None,
    **options: Any,
) -> dict[str, float]:
    """Average retrieval metrics of ``query_emb`` against ``corpus_emb``: ``retrieval_scores(...).metrics``.

    Args:
        query_emb, corpus_emb, relevant: as for :func:`retrieval_scores`.
        options: keyword options of :func:`retrieval_scores` (``ks``, ``chunk_size``, ``device``,
            ``normalize``, ``show_progress``).

    Returns:
        ``{"ndcg@10": ..., "mrr@10": ..., "recall@1": ..., "recall@10": ..., "recall@100": ..., "map@100": ...}``
        (floats in [0, 1]).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> corpus = rng.normal(size=(50, 8)).astype(np.float32)
        >>> m = retrieval_metrics(corpus + 0.01, corpus, device="cpu", show_progress=False)
        >>> m["recall@1"], m["mrr@10"]
        (1.0, 1.0)
    """
    return retrieval_scores(query_emb, corpus_emb, relevant, **options).metrics


def retrieval_scores(
    query_emb: np.ndarray | torch.Tensor,
    corpus_emb: np.ndarray | torch.Tensor,
    relevant: Any = None,
    *,
    ks: dict[str, Sequence[int]] | None = None,
    chunk_size: int | None = None,
    device: str | torch.device | None = "auto",
    normalize: bool = True,
    show_progress: bool | None = None,
) -> RetrievalResult:
    """Retrieval metrics of ``query_emb`` against ``corpus_emb`` (exact, chunked search), mean and per query.

    Args:
        query_emb: (Q, d) float array/tensor (memory-mapped arrays are read chunk by chunk).
        corpus_emb: (N, d) float array/tensor; kept on ``device`` during the search.
        relevant: relevance, see :func:`hardbatch.evaluate.relevance.relevance_matrix`; default query i ↔
            corpus row i.
        ks: cut-offs per metric family, e.g. ``{"ndcg": [10], "recall": [1, 5], "precision": [10]}``;
            families not given are not computed. Default :data:`DEFAULT_KS`.
        chunk_size: queries per score block (default: ~256 MB blocks).
        device: "auto" (CUDA if available) or a torch device.
        normalize: cosine similarity (default) instead of raw dot product.
        show_progress: progress bar.

    Returns:
        :class:`RetrievalResult`: ``metrics`` (``{"ndcg@10": ..., "mrr@10": ..., ...}``, floats in [0, 1]),
        per-query values and counts.

    Example:
        >>> q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
        >>> result = retrieval_scores(q, q, [{1}, {1}], ks={"mrr": [10]}, device="cpu", show_progress=False)
        >>> result.per_query["mrr@10"].tolist()
        [0.5, 1.0]
    """
    cutoffs = _check_ks(ks if ks is not None else DEFAULT_KS)
    # A zero row is well defined here (it scores 0 against everything); mining refuses it instead.
    check_embeddings(query_emb, "query embeddings", allow_zero_rows=True)
    check_embeddings(corpus_emb, "corpus embeddings", dim=query_emb.shape[1], allow_zero_rows=True)
    num_queries, num_corpus = len(query_emb), len(corpus_emb)
    grades = relevance_matrix(relevant, num_queries, num_corpus)
    num_relevant = np.diff(grades.indptr)
    if not (num_relevant > 0).any():
        raise DataError("no query has a relevant corpus document; nothing to evaluate")

    ideal = _ideal_dcg(grades, cutoffs.get("ndcg", ()))
    names = [f"{family}@{k}" for family, values in cutoffs.items() for k in values]
    per_query = {name: np.full(num_queries, np.nan) for name in names}
    depth = max(k for values in cutoffs.values() for k in values)
    pair_keys = _pair_keys(grades)
    for start, _, indices in iter_topk(
        query_emb,
        corpus_emb,
        depth,
        chunk_size=chunk_size,
        device=device,
        normalize=normalize,
        show_progress=show_progress,
    ):
        stop = start + len(indices)
        gains = _gains(grades, pair_keys, indices, start)
        chunk_values = _chunk_metrics(gains, num_relevant[start:stop], ideal, start, cutoffs)
        for name, values in chunk_values.items():
            per_query[name][start:stop] = values

    evaluated = num_relevant > 0
    metrics = {name: float(per_query[name][evaluated].mean()) for name in names}
    for name in names:
        per_query[name][~evaluated] = np.nan
    return RetrievalResult(
        metrics=metrics,
        per_query=per_query,
        num_queries=num_queries,
        num_corpus=num_corpus,
        num_skipped=int((~evaluated).sum()),
    )


def _check_ks(ks: dict[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    cutoffs: dict[str, tuple[int, ...]] = {}
    for family, values in ks.items():
        if family not in _METRICS:
            raise ConfigError(f"unknown metric '{family}'; choose from {', '.join(_METRICS)}")
        values = tuple(sorted({int(k) for k in values}))
        if any(k < 1 for k in values):
            raise ConfigError(f"cut-offs for {family} must be positive integers, got {list(values)}")
        if values:
            cutoffs[family] = values
    if not cutoffs:
        raise ConfigError("no metric requested (ks is empty)")
    return cutoffs


def _discounts(length: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, length + 2, dtype=np.float64))


def _ideal_dcg(grades: sp.csr_matrix, ks: Sequence[int]) -> dict[int, np.ndarray]:
    """IDCG@k per query from its best grades, vectorised over all judgements (no per-query loop)."""
    if not ks:
        return {}
    num_queries = grades.shape[0]
    rows = np.repeat(np.arange(num_queries), np.diff(grades.indptr))
    order = np.lexsort((-grades.data, rows))
    sorted_grades = grades.data[order]
    rank = np.arange(len(rows)) - grades.indptr[rows]  # rows are already grouped, so rows[order] == rows
    discounts = _discounts(int(rank.max()) + 1 if len(rank) else 1)
    return {
        k: np.bincount(
            rows, weights=np.where(rank < k, sorted_grades * discounts[rank], 0.0), minlength=num_queries
        )
        for k in ks
    }


def _pair_keys(grades: sp.csr_matrix) -> np.ndarray:
    """Sorted int64 keys ``query * N + doc`` of all judgements, for vectorised look-ups."""
    rows = np.repeat(np.arange(grades.shape[0], dtype=np.int64), np.diff(grades.indptr))
    return rows * grades.shape[1] + grades.indices.astype(np.int64)


def _gains(grades: sp.csr_matrix, pair_keys: np.ndarray, indices: np.ndarray, start: int) -> np.ndarray:
    """(chunk, k) grades of the retrieved documents (0 for unjudged ones)."""
    queries = np.arange(start, start + len(indices), dtype=np.int64)[:, None]
    wanted = queries * grades.shape[1] + indices
    position = np.searchsorted(pair_keys, wanted)
    position = np.minimum(position, max(len(pair_keys) - 1, 0))
    if not len(pair_keys):
        return np.zeros(indices.shape)
    found = pair_keys[position] == wanted
    return np.where(found, grades.data[position], 0.0)


def _chunk_metrics(
    gains: np.ndarray,
    num_relevant: np.ndarray,
    ideal: dict[int, np.ndarray],
    start: int,
    cutoffs: dict[str, tuple[int, ...]],
) -> dict[str, np.ndarray]:
    depth = gains.shape[1]
    hits = gains > 0
    ranks = np.arange(1, depth + 1, dtype=np.float64)
    denominator = np.maximum(num_relevant, 1).astype(np.float64)
    cumulative_hits = np.cumsum(hits, axis=1)
    out: dict[str, np.ndarray] = {}
    for k in cutoffs.get("ndcg", ()):
        dcg = (gains[:, :k] * _discounts(min(k, depth))).sum(axis=1)
        idcg = ideal[k][start : start + len(gains)]
        out[f"ndcg@{k}"] = np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)
    for k in cutoffs.get("mrr", ()):
        top = hits[:, :k]
        first = top.argmax(axis=1)
        out[f"mrr@{k}"] = np.where(top.any(axis=1), 1.0 / (first + 1), 0.0)
    for k in cutoffs.get("recall", ()):
        out[f"recall@{k}"] = cumulative_hits[:, min(k, depth) - 1] / denominator
    for k in cutoffs.get("precision", ()):
        out[f"precision@{k}"] = cumulative_hits[:, min(k, depth) - 1] / k
    if "map" in cutoffs:
        precision_at_hit = np.where(hits, cumulative_hits / ranks, 0.0)
        cumulative_precision = np.cumsum(precision_at_hit, axis=1)
        for k in cutoffs["map"]:
            out[f"map@{k}"] = cumulative_precision[:, min(k, depth) - 1] / denominator
    return out
