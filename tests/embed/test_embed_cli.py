"""``hardbatch embed DATA --model M -o DIR``."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from hardbatch.app.cli.main import app
from hardbatch.embed import load_embeddings


def test_embed_command_writes_query_and_positive_embeddings(tmp_path, tiny_model_dir):
    data = tmp_path / "pairs.jsonl"
    rows = [{"query": f"question {i}", "positive": f"answer {i} " * (i + 1)} for i in range(5)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "emb"
    args = [
        "--quiet",
        "embed",
        str(data),
        "--model",
        str(tiny_model_dir),
        "-o",
        str(out),
        "--batch-size",
        "2",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "embeddings of" in result.output and "dimension" in result.output
    query = load_embeddings(out / "query.npy", rows=5, dim=32)
    positive = load_embeddings(out / "positive.npy", rows=5, dim=32)
    np.testing.assert_allclose(np.linalg.norm(positive, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(query, positive)
    assert json.loads((out / "query.meta.json").read_text())["num_texts"] == 5

    strict = CliRunner().invoke(app, [*args, "--strict", "--max-seq-length", "8"])
    assert strict.exit_code != 0 and "stale embedding cache" in str(strict.exception)
