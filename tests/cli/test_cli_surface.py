"""Global command-line options without other tests: ``--version`` and ``--debug``."""

from __future__ import annotations

import json
import re
import sys

import pytest
from typer.testing import CliRunner

import hardbatch
from hardbatch.app.cli import main as cli_main
from hardbatch.errors import DataError


def test_version_prints_the_package_version():
    from importlib.metadata import version

    result = CliRunner().invoke(cli_main.app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"hardbatch {hardbatch.__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", hardbatch.__version__)
    assert hardbatch.__version__ == version("hardbatch")


@pytest.fixture
def bad_pairs(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"query": "q", "positive": ""}) + "\n")
    return path


def test_user_error_is_one_line_and_exit_2_without_debug(bad_pairs, monkeypatch, capsys):
    monkeypatch.setitem(cli_main._state, "debug", False)
    monkeypatch.setattr(sys, "argv", ["hardbatch", "data", "validate", str(bad_pairs)])
    with pytest.raises(SystemExit) as info:
        cli_main.run()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "bad.jsonl" in err and "Traceback" not in err


def test_debug_re_raises_the_error_with_its_traceback(bad_pairs, monkeypatch):
    monkeypatch.setitem(cli_main._state, "debug", False)
    monkeypatch.setattr(sys, "argv", ["hardbatch", "--debug", "data", "validate", str(bad_pairs)])
    with pytest.raises(DataError, match=r"bad\.jsonl") as info:
        cli_main.run()
    assert info.traceback[-1].path.name != "main.py"  # raised where the data was read, not re-wrapped
    monkeypatch.setitem(cli_main._state, "debug", False)
