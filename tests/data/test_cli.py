from __future__ import annotations

import json
import re
import sys

import pytest
from typer.testing import CliRunner

from hardbatch.app.cli.main import app
from hardbatch.data import PairDataset

runner = CliRunner()


def test_validate_reports_counts(tmp_path):
    path = PairDataset(["q a", "q a", "q b"], ["p a", "p a", "p b"], [["n"], [], ["m", "o"]]).save(
        tmp_path / "d.jsonl"
    )
    result = runner.invoke(app, ["data", "validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "pairs" in result.output and "3" in result.output
    assert "0 / 1.00 / 2" in result.output  # negatives min / mean / max
    deduped = runner.invoke(app, ["data", "validate", str(path), "--drop-duplicates"])
    assert re.search(r"│ pairs\s+│ 2\s", deduped.output), deduped.output


def test_validate_with_column_map(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("question,answer\nhow are you,fine thanks\n", encoding="utf-8")
    result = runner.invoke(
        app, ["data", "validate", str(path), "--map", "question=query", "--map", "answer=positive"]
    )
    assert result.exit_code == 0, result.output


def test_validate_bad_file_prints_one_line_and_exits_2(tmp_path, monkeypatch, capsys):
    from hardbatch.app.cli.main import run

    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"query": "q", "positive": "p"}) + "\n" + json.dumps({"query": "", "positive": "p"}) + "\n"
    )
    monkeypatch.setattr(sys, "argv", ["hardbatch", "data", "validate", str(path)])
    with pytest.raises(SystemExit) as info:
        run()  # the real entry point: user errors become one red line and exit status 2
    assert info.value.code == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert f"{path}: line 2: field 'query' is empty" in err
    assert "Traceback" not in err


def test_convert_and_codesearch_commands(tmp_path):
    src = PairDataset(["q a", "q b"], ["p a", "p b"]).save(tmp_path / "in.jsonl")
    result = runner.invoke(app, ["data", "convert", str(src), str(tmp_path / "out.parquet")])
    assert result.exit_code == 0 and (tmp_path / "out.parquet").exists()

    pkg = tmp_path / "clipkg"
    pkg.mkdir()
    for k in range(12):
        (pkg / f"m{k}.py").write_text(
            f'def g{k}(x):\n    """Function {k} does something rather specific."""\n    y = x + {k}\n    return y\n'
        )
    args = ["data", "codesearch", "-o", str(tmp_path / "cs"), "-p", str(pkg), "-j", "1"]
    built = runner.invoke(app, args)
    assert built.exit_code == 0, built.output
    assert "clipkg" in built.output and "12" in built.output and "train.parquet" in built.output
    reused = runner.invoke(app, args)
    assert "up to date" in reused.output
    changed = runner.invoke(app, [*args, "--no-mask-name"])
    assert "different parameters (mask_name)" in changed.output.replace("\n", "")
