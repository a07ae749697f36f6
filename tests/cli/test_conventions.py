"""One CLI convention everywhere: data positional, -o/--output, -m/--model, -t/--teacher."""

from __future__ import annotations

import typer

from hardbatch.app.cli.main import app


def _commands(group, prefix=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*prefix, name))
        else:
            yield " ".join((*prefix, name)), command


def test_every_command_follows_the_option_conventions():
    seen = set()
    for name, command in _commands(typer.main.get_command(app)):
        seen.add(name)
        for param in command.params:
            opts = set(getattr(param, "opts", [])) | set(getattr(param, "secondary_opts", []))
            assert not opts & {"--out", "--output-dir", "--out-dir", "--data", "-d"}, (name, opts)
            if "--output" in opts or "-o" in opts:
                assert {"-o", "--output"} <= opts, (name, opts)
            if "--model" in opts or "-m" in opts:
                assert {"-m", "--model"} <= opts, (name, opts)
            if "--teacher" in opts or "-t" in opts:
                assert {"-t", "--teacher"} <= opts, (name, opts)
        if any(param.name == "data" for param in command.params):
            data = next(param for param in command.params if param.name == "data")
            assert data.param_type_name == "argument", f"{name}: DATA must be positional"
    assert {"train", "evaluate", "inspect", "embed", "mine b3", "mine gcbs", "demo", "experiment"} <= seen


def test_old_spellings_still_work_with_a_note(tmp_path, cli, monkeypatch):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"query": "q", "positive": "p"}\n')
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("x")
    code, _, err = cli("--quiet", "inspect", "--data", pairs, "--out", a_file)
    assert code == 2 and "a-file.txt: is a file, not a folder" in err  # reached the output check: parsed
    assert "note: --out is now -o/--output" in err and "note: --data DATA is now the positional" in err

    seen = {}

    def fake_train(config):
        seen["config"] = config
        raise SystemExit(0)

    monkeypatch.setattr("hardbatch.train.trainer.train", fake_train)
    code, _, err = cli("train", pairs, "--output-dir", tmp_path / "run", "--max-steps", "1")
    assert code == 0, err
    assert seen["config"].output_dir == str(tmp_path / "run") and "--output-dir is now" in err


def test_building_the_cli_imports_no_torch():
    """``train``'s options come from TrainConfig without importing the trainer (``--help`` stays fast)."""
    import subprocess
    import sys

    code = (
        "import sys, typer\n"
        "from hardbatch.app.cli.main import app\n"
        "typer.main.get_command(app)\n"
        "print(sorted(m for m in ('torch', 'sentence_transformers') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
