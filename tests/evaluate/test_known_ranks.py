"""Evaluation against hand-computed ranks: an encoder whose embeddings fix every query's ranking.

The corpus documents are orthonormal (one-hot), so a query's cosine with document j is proportional to its
weight w_j: the weights below give each query's relevant document a chosen rank, and the metrics follow by
hand (single relevant document per query: nDCG@10 = 1 / log2(rank + 1), MRR = MAP = 1 / rank).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

from hardbatch.errors import DataError
from hardbatch.evaluate import evaluate_model, evaluate_texts
from hardbatch.evaluate.relevance import relevance_matrix

DOCS = ["def add(a, b)", "def read(path)", "def parse(s)", "def sort(xs)", "def mean(xs)"]
# query text -> (weights over the 5 documents, relevant document, rank of the relevant document)
QUERIES = {
    "add two numbers": ([5, 4, 3, 2, 1], 0, 1),
    "sum of two integers": ([4, 5, 3, 2, 1], 0, 2),
    "read a text file": ([5, 3, 4, 2, 1], 1, 3),
    "parse json": ([4, 3, 5, 2, 1], 2, 1),
    "sort a list": ([5, 4, 3, 1, 2], 3, 5),
    "mean of values": ([1, 2, 3, 4, 5], 4, 1),
}
RANKS = [rank for _, _, rank in QUERIES.values()]
EXPECTED = {
    "ndcg@10": np.mean([1 / math.log2(r + 1) for r in RANKS]),
    "mrr@10": np.mean([1 / r for r in RANKS]),
    "map@100": np.mean([1 / r for r in RANKS]),
    "recall@1": np.mean([r <= 1 for r in RANKS]),
    "recall@10": 1.0,
}


class FixedEncoder:
    """A stand-in SentenceTransformer: ``encode`` looks each text up in a table of vectors."""

    training = False

    def __init__(self) -> None:
        self.table = {doc: np.eye(5)[j] for j, doc in enumerate(DOCS)}
        self.table.update({q: np.asarray(w, dtype=np.float64) for q, (w, _, _) in QUERIES.items()})

    def encode(self, texts, normalize_embeddings=True, **_):
        vectors = np.stack([self.table[t] for t in texts]).astype(np.float32)
        if normalize_embeddings:
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors


PAIRS = SimpleNamespace(
    name="toy",
    queries=list(QUERIES),
    positives=[DOCS[relevant] for _, relevant, _ in QUERIES.values()],  # "def add" twice: deduplicated
)


def test_evaluate_model_equals_hand_computed_metrics():
    metrics = evaluate_model(FixedEncoder(), PAIRS, batch_size=2, device="cpu", show_progress=False)
    for name, value in EXPECTED.items():
        assert metrics[name] == pytest.approx(value, abs=1e-9), name
    assert metrics["recall@1"] == pytest.approx(0.5)  # not a trivially perfect score


def test_evaluate_texts_per_query_values_and_relevance_forms():
    queries = list(QUERIES)
    relevant = [relevant for _, relevant, _ in QUERIES.values()]
    forms = [relevant, np.asarray(relevant), [{r} for r in relevant], [{r: 1.0} for r in relevant]]
    forms.append(sp.csr_matrix((np.ones(6), (np.arange(6), relevant)), shape=(6, 5)))
    for form in forms:
        result, seconds = evaluate_texts(
            FixedEncoder(), queries, DOCS, form, device="cpu", show_progress=False
        )
        assert result.per_query["mrr@10"].tolist() == pytest.approx([1 / r for r in RANKS])
        assert result.metrics["ndcg@10"] == pytest.approx(EXPECTED["ndcg@10"])
        assert (result.num_queries, result.num_corpus, result.num_skipped) == (6, 5, 0)
        assert set(seconds) == {"encode", "search"}


def test_evaluate_texts_graded_relevance_and_default_pairing():
    # Query "add two numbers" ranks documents 0 > 1 > 2 > 3 > 4. Grades 2 on doc 1 and 1 on doc 3:
    # DCG = 2/log2(3) + 1/log2(5) (ranks 2 and 4), ideal = 2/log2(2) + 1/log2(3).
    result, _ = evaluate_texts(
        FixedEncoder(), ["add two numbers"], DOCS, [{1: 2.0, 3: 1.0}], device="cpu", show_progress=False
    )
    want = (2 / math.log2(3) + 1 / math.log2(5)) / (2 / math.log2(2) + 1 / math.log2(3))
    assert result.metrics["ndcg@10"] == pytest.approx(want)
    assert result.metrics["mrr@10"] == pytest.approx(0.5)
    # Default relevance: query i <-> document i.
    queries = ["add two numbers", "read a text file"]  # doc 0 at rank 1; doc 1 at rank 3
    result, _ = evaluate_texts(FixedEncoder(), queries, DOCS, None, device="cpu", show_progress=False)
    assert result.per_query["mrr@10"].tolist() == pytest.approx([1.0, 1 / 3])


def test_relevance_matrix_forms_are_one_canonical_matrix():
    want = np.array([[1.0, 0, 0], [0, 1.0, 2.0], [0, 0, 0]])
    assert relevance_matrix([{0}, {2: 2.0, 1: 1.0}, set()], 3, 3).toarray().tolist() == want.tolist()
    assert relevance_matrix(sp.csr_matrix(want), 3, 3).toarray().tolist() == want.tolist()
    matrix = relevance_matrix([0, 2], 2, 3)
    assert matrix.toarray().tolist() == [[1.0, 0, 0], [0, 0, 1.0]] and matrix.has_canonical_format
    assert relevance_matrix(None, 2, 3).toarray().tolist() == [[1.0, 0, 0], [0, 1.0, 0]]
    # Zero grades are judged non-relevant and dropped; duplicates collapse.
    assert relevance_matrix([{0: 0.0, 1: 1.0}, [2, 2]], 2, 3).nnz == 2


@pytest.mark.parametrize(
    ("relevant", "queries", "corpus", "message"),
    [
        (None, 3, 2, "at least as many corpus rows"),
        ([0, 5], 2, 3, "5"),
        ([{0: -1.0}], 1, 3, "query 0"),
        ([{0: float("nan")}], 1, 3, "query 0"),
        ([0], 2, 3, "2"),
        ("abc", 1, 3, "str"),
        (sp.csr_matrix((2, 2)), 2, 3, "shape"),
    ],
)
def test_relevance_matrix_errors_are_data_errors(relevant, queries, corpus, message):
    with pytest.raises(DataError, match=message):
        relevance_matrix(relevant, queries, corpus)
