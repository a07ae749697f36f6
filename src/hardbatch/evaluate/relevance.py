"""Relevance judgements for retrieval evaluation, normalised to one sparse (queries × corpus) matrix.

Users describe "which corpus rows are relevant to query i" in several ways; every one is turned into a
canonical ``scipy.sparse.csr_matrix`` of float64 grades (sorted column indices, no duplicates, no explicit
zeros) so the metric code has one input format. A document is *relevant* when its grade is > 0; graded
relevance (e.g. 1 = partially, 2 = highly relevant) feeds the gains of nDCG.

Time and memory O(Q + number of judgements): nothing of size queries × corpus is ever allocated.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
import scipy.sparse as sp

from hardbatch.errors import DataError

__all__ = ["Relevance", "relevance_matrix"]

#: Everything :func:`relevance_matrix` accepts.
Relevance = None | sp.spmatrix | sp.sparray | np.ndarray | Sequence[int | Iterable[int] | Mapping[int, float]]


def relevance_matrix(relevant: Any, num_queries: int, num_corpus: int) -> sp.csr_matrix:
    """Turn any supported relevance description into a canonical CSR matrix of grades.

    Args:
        relevant: one of
            * ``None``: query ``i`` is relevant to corpus row ``i`` only (the paired default; needs
              ``num_queries <= num_corpus``);
            * a 1-D integer array or list of ints: the single relevant corpus row per query;
            * a sequence (one entry per query) of sets/lists of corpus rows (binary relevance) or of
              ``{corpus_row: grade}`` dicts (graded relevance, grades >= 0, 0 = judged non-relevant);
            * a scipy sparse matrix of shape (num_queries, num_corpus) holding grades.
        num_queries: number of queries Q.
        num_corpus: number of corpus documents N.

    Returns:
        ``csr_matrix`` of shape (Q, N), dtype float64, canonical format, only strictly positive grades.

    Raises:
        DataError: wrong length or shape, a corpus id out of range, or a negative / non-finite grade; the
            message names the query row.

    Example:
        >>> relevance_matrix([{0}, {2: 2.0, 1: 1.0}], num_queries=2, num_corpus=3).toarray()
        array([[1., 0., 0.],
               [0., 1., 2.]])
    """
    if relevant is None:
        if num_queries > num_corpus:
            raise DataError(
                f"default relevance (query i ↔ corpus row i) needs at least as many corpus rows as queries; "
                f"got {num_queries} queries and {num_corpus} corpus rows"
            )
        rows = np.arange(num_queries, dtype=np.int64)
        return _canonical(rows, rows.copy(), np.ones(num_queries), num_queries, num_corpus)
    if sp.issparse(relevant):
        return _from_sparse(relevant, num_queries, num_corpus)
    if isinstance(relevant, np.ndarray) and relevant.ndim == 1 and np.issubdtype(relevant.dtype, np.integer):
        return _from_single_ids(relevant, num_queries, num_corpus)
    if isinstance(relevant, str | bytes) or not isinstance(relevant, Sequence | np.ndarray):
        raise DataError(
            f"relevance must be None, a sparse matrix or a sequence with one entry per query, "
            f"got {type(relevant).__name__}"
        )
    return _from_sequence(relevant, num_queries, num_corpus)


def _from_sparse(matrix: Any, num_queries: int, num_corpus: int) -> sp.csr_matrix:
    if tuple(matrix.shape) != (num_queries, num_corpus):
        raise DataError(
            f"relevance matrix has shape {tuple(matrix.shape)}, expected (queries, corpus) = "
            f"({num_queries}, {num_corpus})"
        )
    coo = sp.coo_matrix(matrix)
    return _canonical(
        coo.row.astype(np.int64),
        coo.col.astype(np.int64),
        coo.data.astype(np.float64),
        num_queries,
        num_corpus,
    )


def _from_single_ids(ids: np.ndarray, num_queries: int, num_corpus: int) -> sp.csr_matrix:
    if len(ids) != num_queries:
        raise DataError(f"relevance has {len(ids)} entries, expected one per query ({num_queries})")
    rows = np.arange(num_queries, dtype=np.int64)
    return _canonical(rows, ids.astype(np.int64), np.ones(num_queries), num_queries, num_corpus)


def _from_sequence(relevant: Sequence[Any], num_queries: int, num_corpus: int) -> sp.csr_matrix:
    if len(relevant) != num_queries:
        raise DataError(f"relevance has {len(relevant)} entries, expected one per query ({num_queries})")
    rows: list[int] = []
    cols: list[int] = []
    grades: list[float] = []
    for query, entry in enumerate(relevant):
        for doc, grade in _entry_items(entry, query):
            rows.append(query)
            cols.append(doc)
            grades.append(grade)
    return _canonical(
        np.asarray(rows, dtype=np.int64),
        np.asarray(cols, dtype=np.int64),
        np.asarray(grades, dtype=np.float64),
        num_queries,
        num_corpus,
    )


def _entry_items(entry: Any, query: int) -> Iterable[tuple[int, float]]:
    """(corpus id, grade) pairs of one query's entry; ids in a set/list are binary (grade 1)."""
    if isinstance(entry, Integral):
        return [(int(entry), 1.0)]
    if isinstance(entry, Mapping):
        items = []
        for doc, grade in entry.items():
            if not isinstance(doc, Integral):
                raise DataError(f"relevance of query {query}: corpus id {doc!r} is not an integer")
            if not isinstance(grade, Real) or not math.isfinite(grade) or grade < 0:
                raise DataError(
                    f"relevance of query {query}: grade {grade!r} of corpus id {doc} must be a finite number >= 0"
                )
            items.append((int(doc), float(grade)))
        return items
    if isinstance(entry, str | bytes) or not isinstance(entry, Iterable):
        raise DataError(
            f"relevance of query {query}: expected an int, a set/list of ints or a dict id -> grade, "
            f"got {type(entry).__name__}"
        )
    items = []
    for doc in dict.fromkeys(entry):  # a list may repeat an id; it is still one relevant document
        if not isinstance(doc, Integral):
            raise DataError(f"relevance of query {query}: corpus id {doc!r} is not an integer")
        items.append((int(doc), 1.0))
    return items


def _canonical(
    rows: np.ndarray, cols: np.ndarray, grades: np.ndarray, num_queries: int, num_corpus: int
) -> sp.csr_matrix:
    bad = (cols < 0) | (cols >= num_corpus)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"relevance of query {int(rows[first])}: corpus id {int(cols[first])} is out of range "
            f"[0, {num_corpus})"
        )
    invalid = ~np.isfinite(grades) | (grades < 0)
    if invalid.any():
        first = int(np.flatnonzero(invalid)[0])
        raise DataError(
            f"relevance of query {int(rows[first])}: grade {grades[first]!r} of corpus id {int(cols[first])} "
            "must be a finite number >= 0"
        )
    # Duplicate (query, doc) pairs would be summed by scipy; keep the largest grade instead.
    order = np.lexsort((-grades, cols, rows))
    rows, cols, grades = rows[order], cols[order], grades[order]
    first_of_pair = np.ones(len(rows), dtype=bool)
    first_of_pair[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
    keep = first_of_pair & (grades > 0)
    matrix = sp.csr_matrix((grades[keep], (rows[keep], cols[keep])), shape=(num_queries, num_corpus))
    matrix.sort_indices()
    return matrix
