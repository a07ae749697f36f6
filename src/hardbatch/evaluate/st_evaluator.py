"""hardbatch's retrieval evaluation as a sentence-transformers evaluator, for ``SentenceTransformerTrainer``.

Differences from sentence-transformers' ``InformationRetrievalEvaluator``: the search is exact and chunked
with a documented tie rule (:mod:`hardbatch.evaluate.search`), metrics follow trec_eval definitions
(:mod:`hardbatch.evaluate.metrics`), and metric keys carry no score-function infix (``{name}_ndcg@10``).
Cost per call: encoding Q + N texts plus an O(Q·N·d) search in O(chunk_size·N) memory.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from hardbatch.evaluate.metrics import DEFAULT_KS
from hardbatch.evaluate.model_eval import evaluate_texts, retrieval_task

try:  # sentence-transformers >= 6
    from sentence_transformers.base.evaluation import BaseEvaluator as SentenceEvaluator
except ImportError:  # pragma: no cover - sentence-transformers 5
    from sentence_transformers.evaluation import SentenceEvaluator

__all__ = ["HardbatchRetrievalEvaluator"]


class HardbatchRetrievalEvaluator(SentenceEvaluator):
    """Evaluate retrieval (nDCG@10, MRR@10, Recall@k, MAP@100) during sentence-transformers training.

    Args:
        queries: Q query texts.
        corpus: N corpus texts.
        relevant: relevance (see :func:`hardbatch.evaluate.relevance.relevance_matrix`); default query i ↔
            corpus row i.
        name: prefix of the metric keys (``"{name}_ndcg@10"``); the trainer adds ``eval_`` in front.
        batch_size: texts per forward pass.
        max_seq_length: token cap during evaluation (None: the model's setting).
        ks: metric cut-offs (default :data:`hardbatch.evaluate.DEFAULT_KS`; must include nDCG@10, the
            primary metric).
        chunk_size: queries per search block.
        show_progress: progress bars.
        write_csv: append one row per call to ``hardbatch_retrieval_{name}.csv`` in ``output_path``.

    Example:
        >>> from hardbatch.embed.models import make_tiny_model
        >>> evaluator = HardbatchRetrievalEvaluator(["add", "read"], ["def add()", "def read()"], name="dev")
        >>> metrics = evaluator(make_tiny_model())
        >>> evaluator.primary_metric, sorted(metrics)[0]
        ('dev_ndcg@10', 'dev_map@100')
    """

    def __init__(
        self,
        queries: Sequence[str],
        corpus: Sequence[str],
        relevant: Any = None,
        *,
        name: str = "",
        batch_size: int = 64,
        max_seq_length: int | None = None,
        ks: dict[str, Sequence[int]] | None = None,
        chunk_size: int | None = None,
        show_progress: bool | None = False,
        write_csv: bool = True,
    ) -> None:
        super().__init__()
        self.queries = list(queries)
        self.corpus = list(corpus)
        self.relevant = relevant
        self.name = name
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.ks = dict(ks) if ks is not None else dict(DEFAULT_KS)
        self.chunk_size = chunk_size
        self.show_progress = show_progress
        self.write_csv = write_csv
        self.primary_metric = "ndcg@10"
        self.greater_is_better = True
        if 10 not in self.ks.get("ndcg", ()):
            self.ks["ndcg"] = (*self.ks.get("ndcg", ()), 10)

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        *,
        corpus: Literal["positives", "all"] = "positives",
        name: str | None = None,
        **kwargs,
    ) -> HardbatchRetrievalEvaluator:
        """Queries of ``dataset`` against its distinct positives (see :func:`hardbatch.evaluate.retrieval_task`)."""
        task = retrieval_task(dataset, corpus)
        default_name = getattr(dataset, "name", "")
        return cls(
            task.queries, task.corpus, task.relevant, name=default_name if name is None else name, **kwargs
        )

    def __call__(
        self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        result, _ = evaluate_texts(
            model,
            self.queries,
            self.corpus,
            self.relevant,
            batch_size=self.batch_size,
            max_seq_length=self.max_seq_length,
            ks=self.ks,
            chunk_size=self.chunk_size,
            show_progress=self.show_progress,
        )
        if output_path is not None and self.write_csv:
            self._append_csv(Path(output_path), result.metrics, epoch, steps)
        metrics = self.prefix_name_to_metrics(result.metrics, self.name)
        if hasattr(model, "model_card_data"):
            self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def _append_csv(self, directory: Path, metrics: dict[str, float], epoch: int, steps: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"hardbatch_retrieval_{self.name or 'eval'}.csv"
        header = ["epoch", "steps", *metrics]
        new_file = not path.exists()
        with open(path, "a", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            if new_file:
                writer.writerow(header)
            writer.writerow([epoch, steps, *metrics.values()])
            handle.flush()
            os.fsync(handle.fileno())

    def get_config_dict(self) -> dict[str, Any]:
        return {"ks": self.ks, "max_seq_length": self.max_seq_length, "num_queries": len(self.queries)}
