"""Two-process data-parallel training on CPU (gloo) through ``torchrun -m hardbatch train``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from hardbatch.train import TrainConfig, train

pytestmark = pytest.mark.distributed


def _weights(path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu").state_dict()


def test_torchrun_two_ranks_equals_one_process_on_the_global_batch(
    tmp_path, pairs_files, tiny_model_nodropout_dir
):
    """World 2 × batch 4 sees the same global batches as world 1 × batch 8 (the random sampler cuts the
    same seeded permutation), every rank's documents are negatives for every query, and DDP averages the
    gradients (the DDP run also caches gradients in chunks of 3): without dropout both runs must end with the
    same weights and metrics."""
    common = [
        "--model",
        str(tiny_model_nodropout_dir),
        "--eval-data",
        str(pairs_files["eval"]),
        "--epochs",
        "2",
    ]
    common += ["--lr", "1e-3", "--max-seq-length", "32", "--log-every", "1", "--seed", "3", "--device", "cpu"]
    # fp32 on every machine: the weights must agree to fp32 rounding ("auto" autocasts where bf16 is fast).
    common += ["--eval-batch-size", "16", "--symmetric", "--precision", "fp32"]
    ddp_dir = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += [
        "-m",
        "hardbatch",
        "train",
        str(pairs_files["train"]),
        "-o",
        str(ddp_dir),
        "--batch-size",
        "4",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HARDBATCH_PROGRESS": "0", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(command + common, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ranks" in proc.stdout  # rank 0 printed the summary

    result = json.loads((ddp_dir / "result.json").read_text())
    assert result["world_size"] == 2 and result["global_batch"] == 8 and result["steps"] == 8
    assert result["training_precision"] == "fp32"  # as asked, whatever "auto" means on this machine

    single = train(
        TrainConfig(
            data=str(pairs_files["train"]),
            eval_data=str(pairs_files["eval"]),
            output_dir=str(tmp_path / "single"),
            model=str(tiny_model_nodropout_dir),
            batch_size=8,
            epochs=2,
            lr=1e-3,
            max_seq_length=32,
            log_every=1,
            seed=3,
            device="cpu",
            eval_batch_size=16,
            symmetric=True,
            precision="fp32",
        )
    )
    ddp_weights, single_weights = _weights(ddp_dir / "final"), _weights(single.final_model)
    for key, value in single_weights.items():
        torch.testing.assert_close(ddp_weights[key], value, atol=5e-6, rtol=1e-4)
    for name, value in single.metrics.items():
        assert result["metrics"][name] == pytest.approx(value, abs=1e-6)
    losses = [json.loads(line) for line in (ddp_dir / "metrics.jsonl").read_text().splitlines()]
    single_losses = [
        json.loads(line) for line in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()
    ]
    ddp_curve = [r["loss"] for r in losses if "loss" in r]
    assert ddp_curve == pytest.approx([r["loss"] for r in single_losses if "loss" in r], abs=1e-5)
