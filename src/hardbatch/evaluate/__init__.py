"""Retrieval evaluation: exact chunked search, trec_eval-compatible metrics, model and trainer adapters."""

from __future__ import annotations

from hardbatch.evaluate.metrics import DEFAULT_KS, RetrievalResult, retrieval_metrics, retrieval_scores
from hardbatch.evaluate.relevance import relevance_matrix
from hardbatch.evaluate.search import topk_search, topk_with_ties

__all__ = [
    "DEFAULT_KS",
    "RetrievalResult",
    "relevance_matrix",
    "retrieval_metrics",
    "retrieval_scores",
    "topk_search",
    "topk_with_ties",
]
