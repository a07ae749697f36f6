"""Retrieval evaluation: exact chunked search, trec_eval-compatible metrics, model and trainer adapters."""

from __future__ import annotations

from hardbatch._lazy import lazy_getattr
from hardbatch.evaluate.metrics import DEFAULT_KS, RetrievalResult, retrieval_metrics, retrieval_scores
from hardbatch.evaluate.model_eval import RetrievalTask, evaluate_model, evaluate_texts, retrieval_task
from hardbatch.evaluate.relevance import relevance_matrix
from hardbatch.evaluate.search import topk_search, topk_with_ties

__all__ = [
    "DEFAULT_KS",
    "HardbatchRetrievalEvaluator",
    "RetrievalResult",
    "RetrievalTask",
    "evaluate_model",
    "evaluate_texts",
    "relevance_matrix",
    "retrieval_metrics",
    "retrieval_scores",
    "retrieval_task",
    "topk_search",
    "topk_with_ties",
]


# The sentence-transformers evaluator is imported lazily: sentence_transformers takes seconds to import.
__getattr__ = lazy_getattr(__name__, {"HardbatchRetrievalEvaluator": "hardbatch.evaluate.st_evaluator"})
