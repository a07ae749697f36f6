"""``torchrun -m hardbatch mine b3|gcbs`` on 2 gloo ranks from pair data: the ranks embed their shares of the
pairs (no --query-emb/--positive-emb), rank 0 writes the embedding cache and the plan once, and both plans
equal the single-process command's (B3 with ``--exchange ring``, GCBS with every rank reading all positives).

The reference embeddings are computed in this process with one thread, as each rank computes them, and must
equal rank 0's cache bit for bit; the single-process commands then mine from that reference cache, so a
distributed run that embedded or mined anything differently writes another plan.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from hardbatch.app.cli.mine_cmd import register
from hardbatch.mining import BatchPlan

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

B3 = ["-b", "12", "-k", "6", "--skip", "2", "--window", "10", "--precision", "fp32", "--device", "cpu"]
GCBS = ["-b", "12", "--target-degree", "6", "--device", "cpu"]


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HARDBATCH_PROGRESS": "0", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [*command, "-m", "hardbatch", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_torchrun_mine_b3_and_gcbs_from_data_equal_one_process(tmp_path, tiny_model):
    teacher, data, cache = tmp_path / "teacher", tmp_path / "pairs.jsonl", tmp_path / "emb"
    tiny_model.save(str(teacher))
    topics = ["sort a list", "read a file", "parse json", "open a socket", "add numbers", "reverse text"]
    rows = [
        {"query": f"how do I {topics[i % 6]}" + " fast" * (i % 5), "positive": f"def f{i}(): # {topics[i % 6]}",
         "source": f"s{i % 2}"}
        for i in range(96)
    ]  # fmt: skip
    data.write_text("\n".join(json.dumps(r) for r in rows))

    # B3 with the positive shards passed around the ring, GCBS with every rank reading them all.
    proc = _torchrun("mine", "b3", str(data), "-t", str(teacher), "--emb-dir", str(cache), *B3,
                     "--exchange", "ring", "-o", str(tmp_path / "b3.parquet"))  # fmt: skip
    assert proc.stdout.count("batch plan") == 1  # rank 0 alone prints (and writes)
    _torchrun("mine", "gcbs", str(data), "-t", str(teacher), "--emb-dir", str(cache), *GCBS,
              "-o", str(tmp_path / "gcbs.parquet"))  # fmt: skip

    from hardbatch.data import load_pairs
    from hardbatch.embed import embed_pairs

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = embed_pairs(
            load_pairs(str(data)), str(teacher), tmp_path / "ref", show_progress=False, device="cpu"
        )
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(np.load(cache / "query.npy"), reference.query)
    assert np.array_equal(np.load(cache / "positive.npy"), reference.positive)

    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    ref = ["-t", str(teacher), "--emb-dir", str(tmp_path / "ref")]
    for command, options in (("b3", B3), ("gcbs", GCBS)):
        out = tmp_path / f"single-{command}.parquet"
        result = CliRunner().invoke(app, ["mine", command, str(data), *ref, *options, "-o", str(out)])
        assert result.exit_code == 0, result.output
        single, distributed = BatchPlan.load(out), BatchPlan.load(tmp_path / f"{command}.parquet")
        np.testing.assert_array_equal(distributed.clusters, single.clusters)
        np.testing.assert_array_equal(np.sort(distributed.remainder), np.sort(single.remainder))
        assert distributed.params["world_size"] == 2
    assert all(
        info["exchange"] == "ring" for info in BatchPlan.load(tmp_path / "b3.parquet").stats["knn_info"]
    )
