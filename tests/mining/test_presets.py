from __future__ import annotations

import pytest

from hardbatch.errors import ConfigError
from hardbatch.mining.presets import PAPER, paper_skip, preset, vqa_sources
from hardbatch.train import TrainConfig


def test_paper_values():
    # The B3 paper's table (§4, App. C): temperature 0.02, K=32, p=30/70, m=100, h=5, global batch 1024.
    assert 1 / PAPER["scale"] == pytest.approx(0.02)
    assert (PAPER["cluster_size"], PAPER["skip"], PAPER["vqa_skip"], PAPER["window"]) == (32, 30, 70, 100)
    assert (PAPER["hard_negatives"], PAPER["global_batch"], PAPER["count_self"]) == (5, 1024, True)
    assert preset("b3-paper")["hard_negatives"] == 0
    assert paper_skip(vqa_sources(["MSCOCO_i2t", "OK-VQA"])) == {"*": 30, "OK-VQA": 70}
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("b3")


def test_train_preset_fills_only_defaults(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    config = TrainConfig(data="x.jsonl", output_dir="run", preset="b3pp-paper")
    assert config.sampler == "b3" and config.scale == 50.0 and config.batch_size == 128  # 1024 over 8 ranks
    assert config.sampler_options["num_hard_negatives"] == 5
    assert config.sampler_options["mine_options"] == {
        "cluster_size": 32, "skip": 30, "window": 100, "count_self": True, "community": "metis-kway",
    }  # fmt: skip
    explicit = TrainConfig(
        data="x.jsonl", output_dir="run", preset="b3-paper", batch_size=32, scale=20.5, plan="plan.parquet",
        sampler_options={"mine_options": {"skip": 5}},
    )  # fmt: skip
    assert explicit.batch_size == 32 and explicit.scale == 20.5 and explicit.sampler == "b3"
    assert "num_hard_negatives" not in explicit.sampler_options  # B3, not B3++
    assert explicit.sampler_options == {"mine_options": {"skip": 5}}  # a plan: nothing to mine
    assert explicit.to_dict()["preset"] == "b3-paper"
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="does not split over 3 ranks"):
        TrainConfig(data="x.jsonl", output_dir="run", preset="b3-paper")
