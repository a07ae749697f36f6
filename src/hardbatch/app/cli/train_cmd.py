"""``hardbatch train``: fine-tune a sentence-transformers model with a hardbatch sampler and the tiled loss.

Also runs under ``torchrun --nproc-per-node P -m hardbatch train ...`` (gloo on CPU, NCCL on GPU).

The options are generated from :class:`hardbatch.train.TrainConfig`: one ``--kebab-case`` option per
field, typed by the field's annotation, defaulting to the field's default, documented by the field's
entry in the class docstring. A new field is a new option; nothing here restates them. ``--config FILE``
reads a JSON object of fields (for example a previous run's ``config.json``); flags given on the command
line override it.

Adding an option: add the field (with its ``Args:`` entry) to ``TrainConfig``; only an option that is not a
field (a shortcut into ``sampler_options`` such as ``--hard-negatives``) is written here, in
``_parameters``'s ``extra`` list and in :func:`build_config`.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import typer

from hardbatch.app.cli.output import check_output_dir
from hardbatch.errors import ConfigError

__all__ = ["build_config", "parse_options", "register"]

# How fields appear on the command line, where that differs from `--field-name` (CLI conventions:
# data positional, -o/--output, -m/--model, -t/--teacher, -b/--batch-size, -s/--sampler everywhere).
OPTION_NAMES: dict[str, tuple[str, ...]] = {
    "output_dir": ("--output", "-o"),
    "model": ("--model", "-m"),
    "teacher": ("--teacher", "-t"),
    "batch_size": ("--batch-size", "-b"),
    "sampler": ("--sampler", "-s"),
}
# Fields typed ``Any`` in the library (they also take objects) are strings on the command line.
CLI_TYPES: dict[str, Any] = {"data": str | None, "model": str, "teacher": str | None, "eval_data": str | None}
POSITIONAL = "data"
# Fields with a hand-written CLI form: ``--sampler-option KEY=VALUE`` (repeatable) builds the dict.
CUSTOM = {"sampler_options"}


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """``["k=v", ...]`` → dict; values are parsed as JSON when possible (numbers, booleans), else strings.

    Example:
        >>> parse_options(["quantile=0.99", "graph_method=ivf"])
        {'quantile': 0.99, 'graph_method': 'ivf'}
    """
    options: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--sampler-option expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def _help(text: str) -> str:
    """Docstring reST → plain help text."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")
    return text[:1].upper() + text[1:]


def _nullable(base: type) -> Any:
    def parse(value: Any) -> Any:
        if not isinstance(value, str):  # the default, already typed
            return value
        if value.lower() in ("none", "null"):
            return None
        return base(value)

    parse.__name__ = f"{base.__name__}_or_none"
    return parse


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return (args[0] if len(args) == 1 else Any), True
    return hint, False


def _metavar(base: Any) -> str:
    return {int: "INTEGER", float: "FLOAT", str: "TEXT"}.get(base, "TEXT")


def _parameters() -> list[inspect.Parameter]:
    """One typer parameter per TrainConfig field, then the CLI-only ones."""
    from hardbatch.train.config import TrainConfig, field_help

    docs = field_help()
    hints = typing.get_type_hints(TrainConfig)
    params = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)]
    for f in fields(TrainConfig):
        if f.name in CUSTOM:
            continue
        hint = CLI_TYPES.get(f.name, hints[f.name])
        base, optional = _unwrap_optional(hint)
        default = f.default if f.default is not MISSING else None
        help_text = _help(docs.get(f.name, ""))
        if f.name == POSITIONAL:
            info = typer.Argument(None, help=help_text + " Optional with --config.", show_default=False)
            annotation: Any = str | None
        elif base is bool:
            name = f.name.replace("_", "-")
            info = typer.Option(default, f"--{name}/--no-{name}", help=help_text)
            annotation = bool
        else:
            names = OPTION_NAMES.get(f.name, (f"--{f.name.replace('_', '-')}",))
            kwargs: dict[str, Any] = {"help": help_text}
            if optional:
                kwargs.update(parser=_nullable(base), metavar=f"{_metavar(base)}|none")
                if f.default is not MISSING and f.default is not None:
                    kwargs["help"] += " 'none' unsets it."
            info = typer.Option(default, *names, **kwargs)
            annotation = base if not optional else Any
        params.append(
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)
        )
    extra = [
        (
            "sampler_option",
            list[str] | None,
            typer.Option(None, "--sampler-option", help="Extra sampler argument KEY=VALUE (repeatable)."),
        ),
        (
            "hard_negatives",
            int | None,
            typer.Option(
                None,
                "--hard-negatives",
                help="B3++: h hard negatives per example from the plan (sampler b3: h·|B| unified "
                "negatives per batch; random-hn: h from each query's own window).",
            ),
        ),
        (
            "config_file",
            Path | None,
            typer.Option(
                None,
                "--config",
                help="JSON object of TrainConfig fields (e.g. a run's config.json); flags override it.",
            ),
        ),
    ]
    for name, annotation, info in extra:
        params.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)
        )
    return params


def build_config(values: dict[str, Any], given: set[str], config_file: Path | None) -> Any:
    """Defaults < ``--config`` file < flags given on the command line → a validated ``TrainConfig``.

    Args:
        values: every parameter typer parsed (field names, plus ``sampler_option`` and ``hard_negatives``).
        given: the names whose value came from the command line (not a default).
        config_file: the ``--config`` JSON file, if any.

    Raises:
        ConfigError: an unreadable or invalid config file, or a missing DATA / --output.
    """
    from hardbatch.train import TrainConfig

    merged: dict[str, Any] = {}
    if config_file is not None:
        merged.update(_read_config(config_file))
    field_names = {f.name for f in fields(TrainConfig)} - CUSTOM
    for name in field_names:
        if name in given or name not in merged:
            merged[name] = values[name]
    options = dict(merged.get("sampler_options") or {})
    options.update(parse_options(values.get("sampler_option")))
    if values.get("hard_negatives") is not None:
        options["num_hard_negatives"] = values["hard_negatives"]
    merged["sampler_options"] = options
    if merged.get("eval_data") == "":
        merged["eval_data"] = None
    if merged.get("data") is None:
        raise ConfigError("give DATA (training pairs) or a --config file with 'data'")
    if merged.get("output_dir") is None:
        raise ConfigError("give -o/--output (the run folder) or a --config file with 'output_dir'")
    merged["output_dir"] = str(merged["output_dir"])
    return TrainConfig.from_dict(merged, source=str(config_file) if config_file else "command line")


def _read_config(path: Path) -> dict[str, Any]:
    from hardbatch.errors import DataError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"--config {path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: cannot read ({exc})") from exc
    try:
        values = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise DataError(f"--config {path}: invalid JSON ({exc})") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a JSON object of TrainConfig fields")
    return values


def train_command(ctx: typer.Context, **values: Any) -> None:
    """Fine-tune a model on (query, positive) pairs with a hardbatch sampler and the tiled InfoNCE loss."""
    from hardbatch.train import train

    given = {
        name
        for name in values
        # typer bundles its own click: compare the enum by name, not by identity.
        if getattr(ctx.get_parameter_source(name), "name", None) in ("COMMANDLINE", "ENVIRONMENT")
    }
    config = build_config(values, given, values.pop("config_file"))
    check_output_dir(config.output_dir)
    result = train(config)
    if int(os.environ.get("RANK", "0")) == 0:
        print_summary(result)


train_command.__signature__ = inspect.Signature(_parameters())  # type: ignore[attr-defined]


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)


def print_summary(result: Any) -> None:
    """A rich table with the run's counts, time, metrics and output paths."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="hardbatch train", show_header=False)
    summary = result.summary
    rows = [
        ("training pairs", summary.get("train_pairs")),
        ("sampler", summary.get("sampler")),
        ("global batch", summary.get("global_batch")),
        ("ranks", summary.get("world_size")),
        ("steps", result.steps),
        ("train seconds", f"{result.seconds:.1f}"),
        ("seconds / step", summary.get("seconds_per_step")),
    ]
    rows += [
        (f"{summary.get('eval_data')} {name}", f"{value:.4f}")
        for name, value in sorted(result.metrics.items())
    ]
    rows += [
        ("final model", result.final_model),
        ("metrics", result.output_dir / "metrics.jsonl"),
        ("report", result.output_dir / "report.md"),
    ]
    for key, value in rows:
        table.add_row(str(key), str(value))
    Console().print(table)
