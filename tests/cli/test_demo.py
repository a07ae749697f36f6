"""``hardbatch demo --tiny``: every stage of the demo end to end, in seconds (the full demo takes minutes)."""

from __future__ import annotations

import json
import sys

import pytest
import torch


@pytest.fixture
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tiny_demo_runs_every_stage(tmp_path, monkeypatch, capsys, _one_thread):
    from hardbatch.app.cli.main import run
    from hardbatch.mining import BatchPlan

    monkeypatch.setenv("HARDBATCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    monkeypatch.setattr(sys, "argv", ["hardbatch", "demo", "--tiny", "-o", str(out)])
    run()
    printed = capsys.readouterr().out
    for stage in ("[data]", "[teacher]", "[mine]", "[hardness]", "[frozen]", "[train random]", "[train b3]"):
        assert stage in printed
    assert "B3 − random: nDCG@10" in printed and "plot:" in printed
    result = json.loads((out / "demo.json").read_text())
    assert set(result["metrics"]) == {"frozen", "random", "b3"}
    assert result["sizes"]["steps"]["random"] == result["sizes"]["steps"]["b3"] > 0
    # Mined clusters must be harder than random groups under the teacher that mined them. (Batches are not
    # compared: with 26 mutual edges among 128 pairs, a batch of 4 clusters of 4 moves its negatives' mean
    # by ~3/15 of the clusters' margin, less than which random batches are drawn: 0.92081 vs 0.92085.)
    hardness = BatchPlan.load(out / "b3-plan.parquet").stats["hardness"]
    assert hardness["cluster_mean_sim"] > hardness["random_mean_sim"]
    assert {"b3", "random"} <= set(result["hardness"])
    assert set(result["seconds"]) >= {"data", "teacher", "mine", "train random", "train b3", "total"}
    assert (out / "demo.png").stat().st_size > 1000
    assert (out / "run-b3" / "final" / "modules.json").exists()
