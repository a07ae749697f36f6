"""evaluate_model, the retrieval task built from pairs, and the sentence-transformers evaluator adapter."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import numpy as np
import pytest

import hardbatch.embed.encode as encode_module
from hardbatch.errors import ConfigError
from hardbatch.evaluate import HardbatchRetrievalEvaluator, evaluate_model, retrieval_task

PAIRS = SimpleNamespace(
    name="toy",
    queries=[
        "add two numbers",
        "sum of two integers",
        "read a text file",
        "parse json from a string",
        "sort a list in place",
        "compute the mean of values",
    ],
    positives=[
        "def add(a, b): return a + b",
        "def add(a, b): return a + b",  # shared positive: one corpus entry, relevant to both queries
        "def read(path): return open(path).read()",
        "def parse(s): return json.loads(s)",
        "def sort(xs): xs.sort()",
        "def mean(xs): return sum(xs) / len(xs)",
    ],
    negatives=[
        ["def sub(a, b): return a - b"],
        [],
        ["def write(path, s): open(path, 'w').write(s)", "def sort(xs): xs.sort()"],
        ["def dump(o): return json.dumps(o)"],
        [],
        ["def median(xs): ..."],
    ],
)


def test_retrieval_task_deduplicates_positives_and_adds_negatives():
    task = retrieval_task(PAIRS)
    assert len(task.corpus) == 5
    assert task.relevant.tolist() == [0, 0, 1, 2, 3, 4]
    everything = retrieval_task(PAIRS, corpus="all")
    assert len(everything.corpus) == 5 + 4  # the negative equal to a positive is the same entry
    assert everything.relevant.tolist() == task.relevant.tolist()
    with pytest.raises(ConfigError, match="hard negatives"):
        retrieval_task(SimpleNamespace(queries=["q"], positives=["p"], negatives=None), corpus="all")
    with pytest.raises(ConfigError, match="corpus must be one of"):
        retrieval_task(PAIRS, corpus="negatives")


def test_evaluate_model_reuses_its_embedding_cache(tiny_model, tmp_path, monkeypatch):
    # The metric values themselves are checked against hand-computed ranks in test_known_ranks.py.
    metrics = evaluate_model(tiny_model, PAIRS, batch_size=4, show_progress=False, cache_dir=tmp_path)
    assert set(metrics) == {"ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100", "map@100"}
    assert (tmp_path / "queries.npy").exists() and (tmp_path / "corpus.npy").exists()
    monkeypatch.setattr(encode_module, "resolve_encoder", lambda *a, **k: pytest.fail("cache not reused"))
    assert evaluate_model(tiny_model, PAIRS, show_progress=False, cache_dir=tmp_path) == metrics


def test_sentence_transformers_evaluator_adapter(tiny_model, tmp_path):
    evaluator = HardbatchRetrievalEvaluator.from_dataset(PAIRS, batch_size=3)
    assert evaluator.name == "toy"
    tiny_model.train()
    metrics = evaluator(tiny_model, output_path=str(tmp_path), epoch=1, steps=10)
    assert tiny_model.training
    assert evaluator.primary_metric == "toy_ndcg@10"
    assert evaluator.primary_metric in metrics
    assert set(metrics) == {
        f"toy_{k}" for k in ("ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100", "map@100")
    }
    expected = evaluate_model(tiny_model, PAIRS, show_progress=False)
    assert metrics["toy_mrr@10"] == pytest.approx(expected["mrr@10"], abs=1e-6)
    rows = list(csv.reader((tmp_path / "hardbatch_retrieval_toy.csv").read_text().splitlines()))
    assert rows[0][:3] == ["epoch", "steps", "ndcg@10"] and rows[1][:2] == ["1", "10"]
    tiny_model.eval()


def test_default_model_agrees_with_sentence_transformers_information_retrieval_evaluator():
    """The one test with the real packaged MiniLM: good retrieval, same numbers as sentence-transformers."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    from hardbatch.embed.models import load_model

    model = load_model("default", device="cpu")
    ours = evaluate_model(model, PAIRS, show_progress=False)
    assert ours["mrr@10"] > 0.8
    task = retrieval_task(PAIRS)
    reference = InformationRetrievalEvaluator(
        queries={f"q{i}": q for i, q in enumerate(task.queries)},
        corpus={f"d{i}": d for i, d in enumerate(task.corpus)},
        relevant_docs={f"q{i}": {f"d{d}"} for i, d in enumerate(task.relevant)},
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[1],
        precision_recall_at_k=[1, 10, 100],
        map_at_k=[100],
        write_csv=False,
    )(model)
    for name in ("ndcg@10", "mrr@10", "recall@1", "recall@10", "map@100"):
        assert ours[name] == pytest.approx(reference[f"cosine_{name}"], abs=1e-6), name
    assert np.isfinite(list(ours.values())).all()
