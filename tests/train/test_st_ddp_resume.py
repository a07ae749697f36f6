"""sentence-transformers + DDP (2 gloo processes): a resumed run continues the interrupted GCBS epoch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
WORKER = Path(__file__).with_name("st_ddp_worker.py")


def _torchrun(tmp_path, out, pairs, model, *, stop_at=0, resume=False, callback=True, name="report"):
    report = tmp_path / f"{name}.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += [
        str(WORKER),
        str(out),
        str(model),
        str(pairs),
        str(stop_at),
        str(int(resume)),
        str(int(callback)),
    ]
    command += [str(report)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HARDBATCH_PROGRESS": "0", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(report.read_text())


def test_two_rank_st_resume_restores_the_sampler_epoch_and_batches(tmp_path, pairs_files, tiny_model_dir):
    pairs = pairs_files["train"]
    full = _torchrun(tmp_path, tmp_path / "full", pairs, tiny_model_dir, name="full")
    assert full["world_size"] == 2 and full["remined"] == [0, 1, 2] and full["epoch"] == 3
    # 32 pairs, 2 ranks x 8: 2 steps per epoch. Stopped at step 4 (end of epoch 1), the newest checkpoint
    # is step 3: the middle of epoch 1.
    cut = _torchrun(tmp_path, tmp_path / "cut", pairs, tiny_model_dir, stop_at=4, name="cut")
    assert cut["remined"] == [0, 1]
    resumed = _torchrun(tmp_path, tmp_path / "cut", pairs, tiny_model_dir, resume=True, name="resumed")
    assert resumed["remined"] == [2]  # epoch 1 came from the checkpoint; epoch 2 was mined at its start
    assert resumed["epoch"] == 3
