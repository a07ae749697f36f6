"""Evaluate a sentence-transformers model on a pair dataset: queries retrieve among the positives.

Queries, positives and negatives may be images (:class:`~hardbatch.data.images.ImageRef`) for an
image–text model; then the reverse direction (positives retrieve queries: image→text on a text→image set)
is scored too, under ``reverse_*`` keys.

The corpus is every *distinct* positive text of the split (optionally plus the hard negatives). Texts are
deduplicated, so when several pairs share a positive text that single corpus entry is relevant to each of
their queries; a hard negative whose text equals some pair's positive is that same entry.

Time: encoding O((Q + N)·L²) plus search O(Q·N·d); memory O((Q + N)·d) for the embeddings plus
O(chunk_size·N) for the search blocks (see :mod:`hardbatch.evaluate.metrics`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np

from hardbatch.embed.encode import encode_with_loader, resolve_encoder
from hardbatch.embed.fingerprint import model_fingerprint
from hardbatch.errors import ConfigError
from hardbatch.evaluate.metrics import RetrievalResult, retrieval_scores

__all__ = [
    "CORPUS_CHOICES",
    "DIRECTIONS",
    "RetrievalTask",
    "direction_tasks",
    "evaluate_model",
    "evaluate_texts",
    "retrieval_task",
]

CORPUS_CHOICES = ("positives", "all")
DIRECTIONS = ("auto", "forward", "both")


@dataclass
class RetrievalTask:
    """Queries, a deduplicated corpus and, per query, the corpus row of its positive.

    Attributes:
        queries: Q query texts (row-aligned with the dataset).
        corpus: N distinct texts.
        relevant: (Q,) int64 array, corpus row relevant to each query.
    """

    queries: list[str]
    corpus: list[str]
    relevant: np.ndarray = field(repr=False)


def retrieval_task(dataset: Any, corpus: Literal["positives", "all"] = "positives") -> RetrievalTask:
    """Build the retrieval task of a pair dataset (O(Q + N) time and memory).

    Args:
        dataset: anything with ``queries`` and ``positives`` (and ``negatives`` for ``corpus="all"``).
        corpus: ``"positives"`` (all positives of the split) or ``"all"`` (positives plus hard negatives).

    Example:
        >>> from types import SimpleNamespace
        >>> task = retrieval_task(SimpleNamespace(queries=["a", "b", "c"], positives=["x", "y", "x"]))
        >>> task.corpus, task.relevant.tolist()
        (['x', 'y'], [0, 1, 0])
    """
    if corpus not in CORPUS_CHOICES:
        raise ConfigError(f"corpus must be one of {', '.join(CORPUS_CHOICES)}, got {corpus!r}")
    row_of: dict[str, int] = {}
    relevant = np.fromiter(
        (row_of.setdefault(text, len(row_of)) for text in dataset.positives),
        dtype=np.int64,
        count=len(dataset.positives),
    )
    if corpus == "all":
        negatives = getattr(dataset, "negatives", None)
        if not negatives:
            raise ConfigError("corpus='all' needs a dataset with hard negatives; this one has none")
        for row in negatives:
            for text in row:
                row_of.setdefault(text, len(row_of))
    return RetrievalTask(queries=list(dataset.queries), corpus=list(row_of), relevant=relevant)


def evaluate_texts(
    model: Any,
    queries: Sequence[str],
    corpus: Sequence[str],
    relevant: Any = None,
    *,
    batch_size: int = 64,
    max_seq_length: int | None = None,
    ks: dict[str, Sequence[int]] | None = None,
    chunk_size: int | None = None,
    device: str | None = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    show_progress: bool | None = None,
) -> tuple[RetrievalResult, dict[str, float]]:
    """Encode queries and corpus with ``model`` and score retrieval; also return seconds per stage.

    Args:
        model: ``SentenceTransformer``, model directory or ``"default"`` (loaded once).
        queries: Q texts.
        corpus: N texts.
        relevant: see :func:`hardbatch.evaluate.relevance.relevance_matrix` (default query i ↔ corpus i).
        cache_dir: when given, embeddings are cached there as ``queries.npy`` / ``corpus.npy``.
        batch_size, max_seq_length, device, show_progress: as for :func:`hardbatch.embed.encode_texts`.
        ks, chunk_size: as for :func:`hardbatch.evaluate.retrieval_scores`.

    Returns:
        ``(RetrievalResult, {"encode": seconds, "search": seconds})``.
    """
    started = time.perf_counter()
    cache = Path(cache_dir) if cache_dir is not None else None
    info = model_fingerprint(model) if cache is not None else None
    loaded: list[tuple[Any, str | None]] = []

    def get_encoder() -> tuple[Any, str | None]:
        # A path model is loaded at most once for both sides, and not at all when both are cached.
        if not loaded:
            loaded.append(resolve_encoder(model, device))
        return loaded[0]

    embeddings = {}
    for side, texts in (("queries", queries), ("corpus", corpus)):
        embeddings[side] = encode_with_loader(
            texts,
            get_encoder,
            model_info=info,
            batch_size=batch_size,
            max_seq_length=max_seq_length,
            normalize=True,
            cache_path=cache / f"{side}.npy" if cache is not None else None,
            show_progress=show_progress,
        )
    query_emb, corpus_emb = embeddings["queries"], embeddings["corpus"]
    encoded = time.perf_counter()
    result = retrieval_scores(
        query_emb,
        corpus_emb,
        relevant,
        ks=ks,
        chunk_size=chunk_size,
        device=device,
        normalize=True,
        show_progress=show_progress,
    )
    return result, {"encode": encoded - started, "search": time.perf_counter() - encoded}


def evaluate_model(
    model: Any,
    dataset: Any,
    *,
    batch_size: int = 64,
    max_seq_length: int | None = None,
    corpus: Literal["positives", "all"] = "positives",
    ks: dict[str, Sequence[int]] | None = None,
    chunk_size: int | None = None,
    device: str | None = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    show_progress: bool | None = None,
    directions: str = "auto",
    query_prompt: str | None = None,
    document_prompt: str | None = None,
) -> dict[str, float]:
    """Retrieval metrics of ``model`` on ``dataset``: each query against all distinct positives.

    Args:
        model: ``SentenceTransformer``, model directory or ``"default"``.
        dataset: a :class:`hardbatch.data.PairDataset` (or anything with ``queries``/``positives`` lists).
        batch_size: texts per forward pass.
        max_seq_length: token cap (None: the model's setting).
        corpus: ``"positives"`` or ``"all"`` (adds the hard negatives as distractors).
        ks: metric cut-offs (default nDCG@10, MRR@10, Recall@1/10/100, MAP@100).
        chunk_size: queries per search block.
        device: "auto" or a torch device.
        cache_dir: optional embedding cache directory.
        show_progress: progress bars.
        directions: ``"auto"`` (default: also the reverse direction when the data holds images),
            ``"forward"`` or ``"both"``; see :func:`direction_tasks`.
        query_prompt: prompt prepended to the queries (default: the model's ``prompts["query"]``; see
            :mod:`hardbatch.embed.prompts`).
        document_prompt: prompt prepended to the corpus (default: the model's ``"document"`` prompt).

    Returns:
        ``{"ndcg@10": ..., "mrr@10": ..., "recall@1": ..., "recall@10": ..., "recall@100": ..., "map@100": ...}``,
        plus the same keys prefixed ``reverse_`` for the reverse direction (positives retrieve queries).

    Example:
        >>> from types import SimpleNamespace
        >>> from hardbatch.embed.models import make_tiny_model
        >>> pairs = SimpleNamespace(queries=["add", "read a file"], positives=["def add()", "def read()"])
        >>> sorted(evaluate_model(make_tiny_model(), pairs, show_progress=False))[:2]
        ['map@100', 'mrr@10']
    """
    from hardbatch.embed.prompts import model_prompts, with_prompt

    query_prompt, document_prompt = model_prompts(model, query_prompt, document_prompt)
    metrics: dict[str, float] = {}
    for prefix, task in direction_tasks(dataset, corpus, directions):
        # Each side is embedded as in training: the query side with the query prompt, the other with the
        # document prompt, whichever of them is the retrieval query in this direction.
        reverse = bool(prefix)
        result, _ = evaluate_texts(
            model,
            with_prompt(task.queries, document_prompt if reverse else query_prompt),
            with_prompt(task.corpus, query_prompt if reverse else document_prompt),
            task.relevant,
            batch_size=batch_size,
            max_seq_length=max_seq_length,
            ks=ks,
            chunk_size=chunk_size,
            device=device,
            cache_dir=None if cache_dir is None else Path(cache_dir) / (prefix.rstrip("_") or "."),
            show_progress=show_progress,
        )
        metrics.update({prefix + name: value for name, value in result.metrics.items()})
    return metrics


def direction_tasks(
    dataset: Any, corpus: Literal["positives", "all"] = "positives", directions: str = "auto"
) -> list[tuple[str, RetrievalTask]]:
    """The retrieval tasks to score: ``[("", forward)]`` or ``[("", forward), ("reverse_", reverse)]``.

    Forward: queries retrieve among the distinct positives. Reverse: each positive retrieves among the
    distinct queries (image→text on a text→image set). ``directions``: ``"forward"``, ``"both"`` or
    ``"auto"`` (both when the dataset holds images, so an image–text model is scored both ways).

    Example:
        >>> from types import SimpleNamespace
        >>> tasks = direction_tasks(SimpleNamespace(queries=["a", "b"], positives=["x", "x"]), directions="both")
        >>> [(p, t.queries, t.corpus, t.relevant.tolist()) for p, t in tasks]
        [('', ['a', 'b'], ['x'], [0, 0]), ('reverse_', ['x', 'x'], ['a', 'b'], [0, 1])]
    """
    if directions not in DIRECTIONS:
        raise ConfigError(f"directions must be one of {', '.join(DIRECTIONS)}, got {directions!r}")
    tasks = [("", retrieval_task(dataset, corpus))]
    both = directions == "both" or (directions == "auto" and bool(getattr(dataset, "has_images", False)))
    if both:
        if corpus != "positives":
            raise ConfigError("the reverse direction scores against the queries; use corpus='positives'")
        swapped = SimpleNamespace(queries=list(dataset.positives), positives=list(dataset.queries))
        tasks.append(("reverse_", retrieval_task(swapped)))
    return tasks
