"""Training must learn: a tiny model overfits 32 pairs (catches gradient ascent, a detached loss, a zero lr)."""

from __future__ import annotations

import json

import pytest

from hardbatch.evaluate import evaluate_model
from hardbatch.train import TrainConfig, train


@pytest.mark.parametrize("gradcache_chunk", [None, 8])
def test_tiny_model_overfits_32_pairs(tmp_path, train_pairs, tiny_model_nodropout_dir, gradcache_chunk):
    from hardbatch.embed.models import load_model

    before = evaluate_model(load_model(tiny_model_nodropout_dir, device="cpu"), train_pairs, batch_size=32)
    config = TrainConfig(
        data=train_pairs,
        eval_data=train_pairs,
        output_dir=str(tmp_path / "run"),
        model=str(tiny_model_nodropout_dir),
        sampler="random",
        batch_size=16,
        epochs=10,
        lr=5e-3,
        warmup_ratio=0.0,
        max_seq_length=32,
        log_every=1,
        eval_batch_size=32,
        gradcache_chunk=gradcache_chunk,
        device="cpu",
        write_report=False,
    )
    result = train(config)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    first, last = losses[0], losses[-1]
    assert last < 0.5 * first, losses
    # Memorised: each training query ranks its own positive first among the 32.
    assert result.metrics["ndcg@10"] > 0.9, (before, result.metrics)
    assert result.metrics["ndcg@10"] > before["ndcg@10"] + 0.2
