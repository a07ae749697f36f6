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
