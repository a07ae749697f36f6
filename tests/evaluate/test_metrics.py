"""Retrieval metrics checked against pytrec_eval (trec_eval) on random runs with many ties."""

from __future__ import annotations

import numpy as np
import pytest
import pytrec_eval
import scipy.sparse as sp

from hardbatch.errors import ConfigError, DataError
from hardbatch.evaluate import retrieval_metrics, retrieval_scores

KS = {"ndcg": (5, 10), "mrr": (10,), "recall": (1, 10, 100), "map": (10, 100), "precision": (10,)}
TREC_MEASURES = {"ndcg_cut.5,10", "recall.1,10,100", "map_cut.10,100", "P.10", "recip_rank"}


def _docno(index: int, num_corpus: int) -> str:
    # trec_eval orders equal scores by docno descending; reversed zero-padded ids make that equal to our rule
    # (corpus index ascending), so both rankings are identical even with ties.
    return f"d{num_corpus - 1 - index:06d}"


def _integer_embeddings(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    # Small integers keep every dot product exact in float32 and make ties frequent.
    return rng.integers(-2, 3, size=(rows, dim)).astype(np.float32)


def _random_relevance(rng: np.random.Generator, num_queries: int, num_corpus: int) -> list[dict[int, int]]:
    relevant = []
    for query in range(num_queries):
        count = int(rng.integers(0, 6)) if query % 7 else 0  # every 7th query has no relevant document
        docs = rng.choice(num_corpus, size=count, replace=False)
        relevant.append({int(doc): int(rng.integers(1, 4)) for doc in docs})
    return relevant


def _trec_reference(
    query_emb: np.ndarray, corpus_emb: np.ndarray, relevant: list[dict[int, int]]
) -> dict[str, dict[str, float]]:
    num_corpus = len(corpus_emb)
    scores = query_emb.astype(np.float64) @ corpus_emb.astype(np.float64).T
    qrels = {
        f"q{q}": {_docno(doc, num_corpus): grade for doc, grade in rel.items()}
        for q, rel in enumerate(relevant)
        if rel
    }
    judged = [q for q, rel in enumerate(relevant) if rel]
    run = {f"q{q}": {_docno(d, num_corpus): float(scores[q, d]) for d in range(num_corpus)} for q in judged}
    full = pytrec_eval.RelevanceEvaluator(qrels, TREC_MEASURES).evaluate(run)
    # trec_eval's recip_rank has no cut-off: evaluate it on the run truncated to its own top 10.
    top10 = {
        qid: dict(sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)[:10])
        for qid, docs in run.items()
    }
    cut = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    for qid in full:
        full[qid]["mrr_10"] = cut[qid]["recip_rank"]
    return full


OURS_TO_TREC = {
    "ndcg@5": "ndcg_cut_5",
    "ndcg@10": "ndcg_cut_10",
    "mrr@10": "mrr_10",
    "recall@1": "recall_1",
    "recall@10": "recall_10",
    "recall@100": "recall_100",
    "map@10": "map_cut_10",
    "map@100": "map_cut_100",
    "precision@10": "P_10",
}


@pytest.mark.parametrize(("seed", "num_corpus", "chunk_size"), [(0, 150, 7), (1, 60, 1000), (2, 300, 64)])
def test_every_metric_matches_pytrec_eval_with_ties_and_graded_relevance(seed, num_corpus, chunk_size):
    rng = np.random.default_rng(seed)
    num_queries = 45
    query_emb = _integer_embeddings(rng, num_queries, 5)
    corpus_emb = _integer_embeddings(rng, num_corpus, 5)
    relevant = _random_relevance(rng, num_queries, num_corpus)

    ours = retrieval_scores(
        query_emb, corpus_emb, relevant, ks=KS, chunk_size=chunk_size, device="cpu", normalize=False
    )
    reference = _trec_reference(query_emb, corpus_emb, relevant)

    assert ours.num_skipped == sum(1 for rel in relevant if not rel)
    assert len(reference) == num_queries - ours.num_skipped
    judged = [q for q in range(num_queries) if relevant[q]]
    for ours_name, trec_name in OURS_TO_TREC.items():
        expected = np.array([reference[f"q{q}"][trec_name] for q in judged])
        got = ours.per_query[ours_name][judged]
        np.testing.assert_allclose(got, expected, atol=1e-12, err_msg=ours_name)
        assert ours.metrics[ours_name] == pytest.approx(expected.mean(), abs=1e-12)
    # The data really exercised the interesting cases: several relevant documents, none retrieved in the top 10.
    assert max(len(rel) for rel in relevant) > 1
    assert (ours.per_query["mrr@10"][judged] == 0).any()


def test_default_relevance_is_the_diagonal_and_matches_pytrec_eval():
    rng = np.random.default_rng(5)
    corpus = rng.normal(size=(80, 16)).astype(np.float32)
    queries = (corpus + rng.normal(scale=1.2, size=corpus.shape)).astype(np.float32)
    ours = retrieval_metrics(queries, corpus, device="cpu", chunk_size=9, normalize=False, ks=KS)
    relevant = [{i: 1} for i in range(80)]
    reference = _trec_reference(queries, corpus, relevant)
    for ours_name, trec_name in OURS_TO_TREC.items():
        expected = np.mean([reference[f"q{q}"][trec_name] for q in range(80)])
        assert ours[ours_name] == pytest.approx(expected, abs=1e-6), ours_name
    assert 0 < ours["mrr@10"] < 1


def test_default_keys_and_cosine_normalisation():
    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(30, 8)).astype(np.float32)
    metrics = retrieval_metrics(
        corpus * rng.uniform(0.1, 10, size=(30, 1)).astype(np.float32), corpus, device="cpu"
    )
    assert set(metrics) == {"ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100", "map@100"}
    assert metrics["recall@1"] == 1.0  # cosine ignores the query scaling


def test_relevance_formats_agree():
    rng = np.random.default_rng(3)
    queries = rng.normal(size=(6, 4)).astype(np.float32)
    corpus = rng.normal(size=(10, 4)).astype(np.float32)
    as_sets = [{0, 3}, {1}, {2, 9}, {4}, {5, 6, 7}, {8}]
    matrix = sp.lil_matrix((6, 10))
    for q, docs in enumerate(as_sets):
        for d in docs:
            matrix[q, d] = 1
    as_lists = [sorted(docs) + sorted(docs) for docs in as_sets]  # repeated ids count once
    kwargs = {"device": "cpu", "ks": KS}
    expected = retrieval_metrics(queries, corpus, as_sets, **kwargs)
    assert retrieval_metrics(queries, corpus, matrix.tocsr(), **kwargs) == expected
    assert retrieval_metrics(queries, corpus, as_lists, **kwargs) == expected
    single = np.array([1, 1, 2, 4, 5, 8])
    assert retrieval_metrics(queries, corpus, single, **kwargs) == retrieval_metrics(
        queries, corpus, [{int(d)} for d in single], **kwargs
    )


@pytest.mark.parametrize(
    ("relevant", "message"),
    [
        ([{0}, {12}], "query 1: corpus id 12 is out of range"),
        ([{0: 1}, {1: -1}], "query 1: grade -1"),
        ([{0}], "expected one per query"),
        ([set(), set()], "no query has a relevant"),
        (["ab", {1}], "query 0"),
    ],
)
def test_bad_relevance_is_reported_with_the_query(relevant, message):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((2, 4)).astype(np.float32)
    with pytest.raises(DataError, match=message):
        retrieval_metrics(emb, rng.standard_normal((10, 4)).astype(np.float32), relevant, device="cpu")


def test_bad_embeddings_and_ks():
    good = np.eye(3, dtype=np.float32)
    nan = good.copy()
    nan[1, 2] = np.nan
    with pytest.raises(DataError, match="query embeddings: row 1 contains NaN"):
        retrieval_metrics(nan, good, device="cpu")
    with pytest.raises(DataError, match="corpus embeddings: expected dimension 3"):
        retrieval_metrics(good, np.eye(3, 4, dtype=np.float32), device="cpu")
    with pytest.raises(DataError, match="at least as many corpus rows"):
        retrieval_metrics(np.ones((4, 3), dtype=np.float32), good, device="cpu")
    with pytest.raises(ConfigError, match="unknown metric 'hits'"):
        retrieval_metrics(good, good, ks={"hits": [1]}, device="cpu")
    with pytest.raises(ConfigError, match="positive"):
        retrieval_metrics(good, good, ks={"ndcg": [0]}, device="cpu")
