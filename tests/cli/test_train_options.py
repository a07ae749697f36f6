"""``hardbatch train``'s options are generated from ``TrainConfig``; ``--config`` files, flags override."""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, fields

import pytest

from hardbatch.app.cli.train_cmd import CUSTOM, POSITIONAL
from hardbatch.errors import ConfigError
from hardbatch.train import TrainConfig
from hardbatch.train.config import field_help


def _train_params():
    import typer

    from hardbatch.app.cli.main import app

    command = typer.main.get_command(app).commands["train"]
    return {param.name: param for param in command.params}


@pytest.fixture
def captured(monkeypatch):
    """Replace the trainer: record the TrainConfig the CLI built instead of training."""
    seen = {}

    def fake_train(config):
        seen["config"] = config
        raise SystemExit(0)

    monkeypatch.setattr("hardbatch.train.trainer.train", fake_train)
    return seen


def test_every_field_is_an_option_with_its_default_and_docstring_help():
    params = _train_params()
    docs = field_help()
    for f in fields(TrainConfig):
        if f.name in CUSTOM:
            continue
        assert f.name in params, f"TrainConfig.{f.name} has no CLI option"
        param = params[f.name]
        if f.name != POSITIONAL:
            assert param.default == (None if f.default is MISSING else f.default), f.name
        text = re.sub(r":\w+:`~?([^`]+)`", r"\1", docs[f.name]).replace("``", "")
        assert text[1:] in (param.help or "") and len(text) > 10, (f.name, param.help)
    assert {"-o", "--output"} <= set(params["output_dir"].opts)
    assert {"-m", "--model"} <= set(params["model"].opts)
    assert {"-t", "--teacher"} <= set(params["teacher"].opts)
    assert params["max_grad_norm"].opts == ["--max-grad-norm"]


def test_config_file_is_read_and_flags_given_override_it(tmp_path, cli, captured):
    config = tmp_path / "config.json"
    values = {"data": "pairs.jsonl", "output_dir": str(tmp_path / "run"), "lr": 0.5, "epochs": 3, "seed": 9}
    config.write_text(json.dumps({**values, "sampler_options": {"drop_last": False}}))
    # --lr given at its default value still overrides the file: precedence follows the source, not the value.
    code, _, err = cli(
        "train", "--config", config, "--epochs", "2", "--lr", "2e-5", "--sampler-option", "drop_last=true"
    )
    assert code == 0, err
    got = captured["config"]
    assert (got.epochs, got.lr, got.seed, got.data) == (2, 2e-5, 9, "pairs.jsonl")
    assert got.sampler_options == {"drop_last": True}


def test_none_unsets_optional_numbers_and_evaluation(tmp_path, cli, captured):
    code, _, err = cli(
        "train", "pairs.jsonl", "-o", tmp_path / "r", "--max-seq-length", "none", "--max-grad-norm", "none",
        "--eval-data", "none", "--max-steps", "5", "-b", "8", "--no-mask-duplicates",
    )  # fmt: skip
    assert code == 0, err
    got = captured["config"]
    assert (got.max_seq_length, got.max_grad_norm, got.eval_data) == (None, None, None)
    assert (got.max_steps, got.batch_size, got.mask_duplicates) == (5, 8, False)


def test_a_runs_config_json_round_trips():
    config = TrainConfig(
        data="pairs.jsonl", output_dir="runs/a", lr=1e-4, max_seq_length=None, symmetric=True
    )
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"data": "d", "output_dir": "o", "learning_rate": 1.0}, "unknown field(s) 'learning_rate'"),
        ({"data": "d", "output_dir": "o", "lr": "fast"}, "field 'lr' must be float, got 'fast'"),
        ({"data": "d", "output_dir": "o", "epochs": True}, "field 'epochs' must be int"),
        (
            {"data": "d", "output_dir": "o", "max_seq_length": 1.5},
            "field 'max_seq_length' must be int or null",
        ),
        ({"output_dir": "o"}, "missing required field(s) data"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_bad_config_values_name_the_field(values, message):
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(values, source="run.json")
    assert message in str(info.value) and str(info.value).startswith("run.json")
