"""Distributed B3 mining (gloo, spawned ranks) writes the same plan as one process.

Each rank ranks its shard of the queries; rank 0 gathers the windows, partitions and saves. Wrong sharding
(an off-by-one row offset, self-exclusion on the shard's local index, shards gathered out of order, a source
group sent with the wrong ids) changes the windows and therefore the clusters, which are compared exactly.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hardbatch.mining import mine_b3
from hardbatch.mining.plan import BatchPlan

pytestmark = pytest.mark.distributed

N, DIM = 300, 16
OPTIONS = dict(batch_size=20, cluster_size=10, skip=3, window=12, seed=0, device="cpu", show_progress=False)


def _data():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, DIM))
    topic = rng.integers(0, 12, N)
    q = (centres[topic] + rng.normal(size=(N, DIM))).astype(np.float32)
    p = (centres[topic] + rng.normal(size=(N, DIM))).astype(np.float32)
    sources = np.where(np.arange(N) % 3 == 0, "a", "b")  # two groups of different sizes, interleaved ids
    return q, p, sources


# Key blocks of 47 positives per rank: block boundaries do not line up with the rank shards (150 or 75 rows).
RUNS = (
    ("global", {}),
    ("sources", {"sources": "sources"}),
    ("global_key_blocks", {"key_block_size": 47}),
    ("sources_key_blocks", {"sources": "sources", "key_block_size": 47}),
)


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from hardbatch.mining.distributed import mine_b3_distributed

        q, p, sources = _data()
        for name, extra in RUNS:
            extra = {key: sources if value == "sources" else value for key, value in extra.items()}
            plan = mine_b3_distributed(q, p, precision="fp32", **OPTIONS, **extra)
            if rank == 0:
                assert plan is not None and plan.params["world_size"] == world
                plan.save(os.path.join(out_dir, f"{name}.parquet"))
            else:
                assert plan is None
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_distributed_plan_equals_single_process(tmp_path, world):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(world, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=world, join=True)
    q, p, sources = _data()
    for name, extra in RUNS:
        extra = {key: sources if value == "sources" else value for key, value in extra.items()}
        blocked = extra.pop("key_block_size", None) is not None  # the single-process reference holds all
        single = mine_b3(q, p, precision="fp32", **OPTIONS, **extra)
        loaded = BatchPlan.load(tmp_path / f"{name}.parquet")
        np.testing.assert_array_equal(loaded.clusters, single.clusters)
        np.testing.assert_array_equal(np.sort(loaded.remainder), np.sort(single.remainder))
        assert loaded.params["world_size"] == world
        infos = loaded.stats["knn_info"]
        for info in infos if isinstance(infos, list) else [infos]:  # rank 0's search really used key blocks
            assert info.get("key_blocks", 1) > 1 if blocked else "key_blocks" not in info
