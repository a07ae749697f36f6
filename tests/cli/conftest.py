from __future__ import annotations

import sys

import pytest


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run ``hardbatch ARGS...`` in this process through the real entry point (``main.run``).

    Returns ``(exit_code, stdout, stderr)``; unlike typer's CliRunner this goes through the error
    handling of :func:`hardbatch.app.cli.main.run` (one line, exit 2).
    """
    from hardbatch.app.cli import main

    def invoke(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["hardbatch", *map(str, args)])
        monkeypatch.setitem(main._state, "debug", False)
        capsys.readouterr()
        try:
            main.run()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return invoke
