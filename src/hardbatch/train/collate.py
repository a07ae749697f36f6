"""Turn a batch of pair rows into tokenised model inputs.

A training batch of ``b`` pairs with ``h`` hard negatives each becomes two feature dicts, tokenised with
the SentenceTransformer's own tokenizer (``model.tokenize``, which pads to the longest text and truncates at
``model.max_seq_length``):

* ``query``: ``b`` rows;
* ``document``: ``b`` positives followed by the batch's extra key texts: the rows' own hard negatives
  (``h`` per row, query-major: those of query ``i`` are rows ``b + i*h ... b + i*h + h - 1``) or, for B3++,
  the ``h · b`` unified negatives mined for the batch (h per example, as in the paper; under global batches
  this rank's share of the global batch's ``h · b · P``), or for ``random-hn`` the ``h`` negatives of each
  query's own rank window (query-major). Either way every query is contrasted with every document, and
  the positive of query ``i`` is document ``i``.

Queries and documents are padded separately because their lengths differ a lot (a docstring vs a function
body); padding both to the longer would nearly double the query cost.

Images (:class:`~hardbatch.data.images.ImageRef`) are decoded here, for this batch only, and handed to
the same ``model.preprocess``/``tokenize`` (a CLIP-style model turns them into ``pixel_values``). A column
that mixes texts and images is a :class:`MixedFeatures`: one feature dict per modality plus the row order.

Cost: O(b * (1 + h) * max_seq_length) time and memory for the token tensors, plus O(b * (1 + h)) decoded
images (pixels) for image columns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hardbatch.data.images import ImageRef, value_token
from hardbatch.embed.prompts import with_prompt
from hardbatch.errors import DataError
from hardbatch.losses.layouts import text_ids

__all__ = [
    "MixedFeatures",
    "PairCollator",
    "TokenizedPairs",
    "assemble_column",
    "column_groups",
    "slice_features",
]

Features = dict[str, Any]


@dataclass
class TokenizedPairs:
    """Tokenised inputs of one batch.

    Attributes:
        query: feature dict with ``b`` rows (``input_ids``: (b, Lq) int64, ``attention_mask``, ... or
            ``pixel_values``: (b, 3, H, W) float for images), or a :class:`MixedFeatures`.
        document: feature dict (or :class:`MixedFeatures`) with ``b + e`` rows: positives then ``e`` extra
            negatives.
        num_queries: ``b``.
        num_extra: ``e``, the number of negative documents after the positives (0 without hard negatives).
        query_ids: (b,) int64 text ids of each query's positive, or ``None``; with ``key_ids`` the loss
            masks every document whose text equals a query's positive but is not that query's own
            positive (a duplicate is a false negative, not a negative).
        key_ids: (b + e,) int64 text ids of the documents, or ``None``.
    """

    query: Features
    document: Features
    num_queries: int
    num_extra: int
    query_ids: torch.Tensor | None = None
    key_ids: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> TokenizedPairs:
        return TokenizedPairs(
            _column_to(self.query, device),
            _column_to(self.document, device),
            self.num_queries,
            self.num_extra,
            self.query_ids,
            self.key_ids,
        )


class PairCollator:
    """Collate ``PairDataset`` rows into :class:`TokenizedPairs`.

    Args:
        tokenize: the model's tokenizer entry point, normally ``SentenceTransformer.tokenize``.
        mask_duplicates: attach text ids so the loss masks duplicate documents (see :class:`TokenizedPairs`).
        num_negatives: hard negatives per query to use; ``None`` uses as many as every row of the batch
            has (0 when the data has none), ``0`` ignores the data's negatives.
        query_prompt: text prepended to every query (sentence-transformers' prompt convention; see
            :mod:`hardbatch.embed.prompts`).
        document_prompt: text prepended to every document (positives and negatives).

    Example:
        >>> from hardbatch.embed.models import make_tiny_model
        >>> collate = PairCollator(make_tiny_model().tokenize)
        >>> batch = collate([{"query": "add two numbers", "positive": "def add(a, b): return a + b"}])
        >>> batch.num_queries, batch.document["input_ids"].shape[0]
        (1, 1)
    """

    def __init__(
        self,
        tokenize: Callable[[list[str]], Features],
        num_negatives: int | None = None,
        mask_duplicates: bool = True,
        query_prompt: str = "",
        document_prompt: str = "",
    ) -> None:
        self.tokenize = tokenize
        self.num_negatives = num_negatives
        self.mask_duplicates = mask_duplicates
        self.query_prompt = query_prompt
        self.document_prompt = document_prompt

    def __call__(
        self, rows: Sequence[Mapping[str, Any]], batch_negatives: Sequence[str] | None = None
    ) -> TokenizedPairs:
        """Tokenise ``rows``; ``batch_negatives`` (extra document texts contrasted with every query, e.g.
        the ``h · b`` B3++ mined negatives) replaces the rows' own negatives when given.
        """
        if not rows:
            raise DataError("cannot collate an empty batch")
        queries = [_text(row, "query") for row in rows]
        positives = [_text(row, "positive") for row in rows]
        if batch_negatives is not None:
            extra = list(batch_negatives)
            extra_where = [("batch", "mined negative")] * len(extra)
        else:
            per_row = self._row_negatives(rows)
            extra = [text for per_query in per_row for text in per_query]
            extra_where = [
                (row.get("id", "?"), f"negatives[{k}]")
                for row, negs in zip(rows, per_row)
                for k in range(len(negs))
            ]
        documents = positives + extra
        ids = [row.get("id", "?") for row in rows]
        query_features = self._features(with_prompt(queries, self.query_prompt), [(i, "query") for i in ids])
        document_features = self._features(
            with_prompt(documents, self.document_prompt), [(i, "positive") for i in ids] + extra_where
        )
        batch = TokenizedPairs(query_features, document_features, len(rows), len(extra))
        if self.mask_duplicates:
            batch.query_ids = text_ids([value_token(v) for v in positives])
            batch.key_ids = text_ids([value_token(v) for v in documents])
        return batch

    def _features(self, values: list[Any], where: list[tuple[Any, str]]) -> Features | MixedFeatures:
        """Tokenise a column; images are decoded here (this batch only). A column mixing texts and images
        becomes one feature dict per modality (a CLIP-style model embeds each with its own tower)."""
        if all(type(v) is str for v in values):
            return self.tokenize(values)
        inputs = [v if type(v) is str else _decode(v, *place) for v, place in zip(values, where)]
        texts = [i for i, v in enumerate(values) if type(v) is str]
        if not texts:
            return self.tokenize(inputs)
        images = [i for i, v in enumerate(values) if type(v) is not str]
        order = torch.empty(len(values), dtype=torch.int64)
        order[torch.tensor(texts + images)] = torch.arange(len(values))
        groups = [self.tokenize([inputs[i] for i in texts]), self.tokenize([inputs[i] for i in images])]
        return MixedFeatures(groups, order)

    def _row_negatives(self, rows: Sequence[Mapping[str, Any]]) -> list[list[str]]:
        if self.num_negatives == 0:
            return []
        per_row = [list(row.get("negatives") or []) for row in rows]
        available = min(len(neg) for neg in per_row)
        wanted = available if self.num_negatives is None else self.num_negatives
        if wanted == 0:
            return []
        for row, neg in zip(rows, per_row):
            if len(neg) < wanted:
                raise DataError(
                    f"row id={row.get('id', '?')!s}: has {len(neg)} negatives, {wanted} are needed "
                    "(set num_negatives lower or fix the data)"
                )
        return [neg[:wanted] for neg in per_row]


@dataclass
class MixedFeatures:
    """A column whose rows mix texts and images: one feature dict per modality and the row order.

    Attributes:
        groups: feature dicts (texts first, then images), each embedded by one model call.
        order: (rows,) int64; row ``r``'s embedding is row ``order[r]`` of the groups' embeddings
            concatenated in ``groups`` order.
    """

    groups: list[Features]
    order: torch.Tensor

    def to(self, device: torch.device | str) -> MixedFeatures:
        return MixedFeatures([_features_to(g, device) for g in self.groups], self.order)


def column_groups(column: Features | MixedFeatures) -> list[Features]:
    """The feature dicts of a column (one, or one per modality)."""
    return list(column.groups) if isinstance(column, MixedFeatures) else [column]


def assemble_column(column: Features | MixedFeatures, embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
    """Row-ordered (rows, d) embeddings of a column from its groups' embeddings (differentiable)."""
    if not isinstance(column, MixedFeatures):
        (only,) = embeddings
        return only
    return torch.cat(list(embeddings)).index_select(0, column.order.to(embeddings[0].device))


def slice_features(features: Features, start: int, end: int) -> Features:
    """Rows ``start:end`` of every tensor in a feature dict (other values are passed through)."""
    return {
        key: value[start:end] if isinstance(value, torch.Tensor) and value.dim() > 0 else value
        for key, value in features.items()
    }


def _column_to(column: Features | MixedFeatures, device: torch.device | str) -> Features | MixedFeatures:
    return column.to(device) if isinstance(column, MixedFeatures) else _features_to(column, device)


def _features_to(features: Features, device: torch.device | str) -> Features:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}


def _text(row: Mapping[str, Any], field: str) -> Any:
    value = row.get(field)
    if type(value) is ImageRef:
        return value
    if not isinstance(value, str) or not value:
        raise DataError(
            f"row id={row.get('id', '?')!s}: field '{field}' must be a non-empty string or an image"
        )
    return value


def _decode(value: Any, row_id: Any, field: str) -> Any:
    if type(value) is not ImageRef:
        raise DataError(f"row id={row_id!s}: field '{field}' must be a non-empty string or an image")
    try:
        return value.load()
    except DataError as exc:
        raise DataError(f"row id={row_id!s}: field '{field}': {exc}") from None
