"""The demo beyond ``--tiny``: the regular configuration path (a model directory as student and teacher),
reduced to seconds, and the command line's size overrides. Training must beat the frozen model."""

from __future__ import annotations

import json
import sys

import pytest
import torch


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("demo-cache")


@pytest.fixture
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_regular_demo_path_with_a_model_directory(tmp_path, demo_cache, monkeypatch, _one_thread):
    from hardbatch.app.demo import TINY_PACKAGES, DemoConfig, run_demo
    from hardbatch.embed.models import make_tiny_model

    monkeypatch.setenv("HARDBATCH_CACHE", str(demo_cache))
    model = tmp_path / "student"
    make_tiny_model(seed=1, dropout=0.0, max_seq_length=32).save(str(model), create_model_card=False)
    config = DemoConfig(
        output_dir=str(tmp_path / "demo"), model=str(model), packages=TINY_PACKAGES, train_pairs=96,
        test_pairs=48, max_seq_length=32, batch_size=16, cluster_size=8, skip=1, window=8, epochs=3, lr=2e-3,
    )  # fmt: skip
    lines: list[str] = []
    result = run_demo(config, log=lines.append)
    assert [line.split("]")[0] + "]" for line in lines] == [
        "[data]", "[teacher]", "[mine]", "[hardness]", "[frozen]", "[train random]", "[train b3]"
    ]  # fmt: skip
    assert not (tmp_path / "demo" / "tiny-model").exists()  # the given model was used, not a random one
    saved = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert saved["sizes"]["model"] == str(model) and saved["config"]["tiny"] is False
    assert result.sizes["steps"] == {"random": 18, "b3": 18}  # 3 epochs of 96 / 16 batches
    frozen = result.metrics["frozen"]["ndcg@10"]
    for sampler in ("random", "b3"):
        assert result.metrics[sampler]["ndcg@10"] > frozen + 0.05, result.metrics


def test_demo_command_applies_its_size_options(tmp_path, demo_cache, monkeypatch, capsys, _one_thread):
    from hardbatch.app.cli.main import run

    monkeypatch.setenv("HARDBATCH_CACHE", str(demo_cache))
    out = tmp_path / "demo"
    argv = [
        "hardbatch",
        "--quiet",
        "demo",
        "--tiny",
        "-o",
        str(out),
        "--train-pairs",
        "64",
        "--test-pairs",
        "0",
    ]
    argv += ["--batch-size", "8", "--epochs", "2", "--max-seq-length", "24", "--seed", "3"]
    monkeypatch.setattr(sys, "argv", argv)
    run()
    saved = json.loads((out / "demo.json").read_text())
    assert saved["config"]["train_pairs"] == 64 and saved["config"]["test_pairs"] is None
    assert (saved["config"]["batch_size"], saved["config"]["epochs"], saved["config"]["seed"]) == (8, 2, 3)
    assert saved["sizes"]["max_seq_length"] == 24 and saved["sizes"]["train_pairs"] == 64
    assert saved["sizes"]["steps"] == {"random": 16, "b3": 16}  # 2 epochs of 64 / 8
    assert "B3 − random" in capsys.readouterr().out
