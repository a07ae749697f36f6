"""``hardbatch evaluate`` end to end on a small pair file with the tiny model."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from hardbatch.app.cli.main import app
from hardbatch.errors import DataError

ROWS = [
    {"query": f"query number {i} about {topic}", "positive": f"def {topic}_{i}(x): return x + {i}"}
    for i, topic in enumerate(["sorting", "parsing", "files", "math", "strings", "dates", "sorting"])
]


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return path


def test_evaluate_command_prints_table_and_writes_json(pairs_file, tiny_model_dir, tmp_path):
    out = tmp_path / "metrics.json"
    args = ["--quiet", "evaluate", str(pairs_file), "--model", str(tiny_model_dir)]
    result = CliRunner().invoke(app, [*args, "--max-seq-length", "32", "--batch-size", "4", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "ndcg@10" in result.output and "7 queries" in result.output
    report = json.loads(out.read_text())
    assert set(report["metrics"]) == {"ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100", "map@100"}
    assert report["num_queries"] == 7 and report["num_corpus"] == 7
    assert (
        report["model"]["id"] == str(tiny_model_dir.resolve()) and len(report["model"]["fingerprint"]) == 64
    )
    assert report["data"]["pairs"] == 7 and report["data"]["fingerprint"]
    assert report["params"]["max_seq_length"] == 32 and report["seconds"]["total"] > 0


def test_evaluate_command_reports_bad_data(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "positive": ""}\n')
    result = CliRunner().invoke(app, ["evaluate", str(bad), "--model", str(tiny_model_dir)])
    assert result.exit_code != 0
    assert isinstance(result.exception, DataError) and "bad.jsonl" in str(result.exception)
