"""Embedding rows belong to their texts: row i equals the model's embedding of text i encoded alone.

Texts differ in length so that the longest-first batching permutes them, some repeat, and batches hold
several texts: a writer that reverses, shifts or permutes rows (within or across batches) fails.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from hardbatch.app.cli.main import app
from hardbatch.embed import embed_pairs, encode_texts, load_embeddings

QUERIES = [f"question {i} " + "word " * ((7 * i) % 5) for i in range(7)] + ["question 2 " + "word " * 4]
POSITIVES = [f"def answer_{i}():\n    return {i}" + " + 1" * ((3 * i) % 4) for i in range(8)]


def _alone(model, texts):
    return np.stack([model.encode([t], normalize_embeddings=True, convert_to_numpy=True)[0] for t in texts])


def test_encode_texts_rows_equal_each_text_encoded_alone(tiny_model):
    texts = [*QUERIES, QUERIES[3], POSITIVES[0]]  # with a duplicate
    got = encode_texts(texts, tiny_model, batch_size=3, show_progress=False)
    np.testing.assert_allclose(got, _alone(tiny_model, texts), atol=2e-5)


def test_embed_pairs_rows_equal_each_text_encoded_alone(tmp_path, tiny_model):
    pairs = type("Pairs", (), {"queries": QUERIES, "positives": POSITIVES})()
    first = embed_pairs(pairs, tiny_model, tmp_path, batch_size=3, show_progress=False)
    cached = embed_pairs(pairs, tiny_model, tmp_path, batch_size=3, show_progress=False)  # from the cache
    for result in (first, cached):
        np.testing.assert_allclose(result.query, _alone(tiny_model, QUERIES), atol=2e-5)
        np.testing.assert_allclose(result.positive, _alone(tiny_model, POSITIVES), atol=2e-5)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_embed_command_rows_equal_each_text_encoded_alone(tmp_path, tiny_model, tiny_model_dir, batch_size):
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(json.dumps({"query": q, "positive": p}) + "\n" for q, p in zip(QUERIES, POSITIVES))
    )
    out = tmp_path / "emb"
    args = ["--quiet", "embed", str(data), "--model", str(tiny_model_dir), "-o", str(out)]
    result = CliRunner().invoke(app, [*args, "--batch-size", str(batch_size), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    query = load_embeddings(out / "query.npy", rows=len(QUERIES), dim=32)
    positive = load_embeddings(out / "positive.npy", rows=len(POSITIVES), dim=32)
    np.testing.assert_allclose(query, _alone(tiny_model, QUERIES), atol=2e-5)
    np.testing.assert_allclose(positive, _alone(tiny_model, POSITIVES), atol=2e-5)
