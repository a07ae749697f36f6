"""Hierarchical B3 with its shards spread over gloo ranks writes the one-process plan; failures reach every rank.

Synthetic topics in three sources of 229, 456 and 15 examples, shards of at most 120: 2 + 4 shards to mine
and one source too small to mine (all remainder), i.e. 7 shards over 2 and over 3 ranks (uneven shares).
Rank 0 also mines the same inputs with the one-process :func:`mine_b3_hierarchical` in its own process (same
threads, so the same k-means), and the parent compares the plans exactly. A shard mined twice or never, a
share merged out of shard order, a shard mined with another source's ``skip`` or without its texts, all
change the clusters or the remainder. The failure checks (2 ranks) run before the equality runs, which
therefore also show that the group is still in step after them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from failing_ranks import TIMEOUT, failing, promptly

from hardbatch.errors import ConfigError, DataError
from hardbatch.mining.plan import BatchPlan

pytestmark = pytest.mark.distributed

N, DIM, K = 700, 12, 10
SHARD = 120


def _data():
    rng = np.random.default_rng(4)
    centres = 3 * rng.normal(size=(20, DIM))
    topic = rng.integers(0, 20, N)
    q = (centres[topic] + rng.normal(size=(N, DIM))).astype(np.float32)
    p = (centres[topic] + rng.normal(size=(N, DIM))).astype(np.float32)
    sources = np.where(np.arange(N) % 3 == 0, "a", "b")
    sources[-15:] = "c"  # one source smaller than 2K: never mined, all remainder
    texts = [f"positive {i % 300}" for i in range(N)]  # repeated texts: filtered per shard
    return q, p, sources, texts


def _runs(sources, texts):
    common = dict(batch_size=20, cluster_size=K, shard_size=SHARD, window=12, seed=1, device="cpu",
                  precision="fp32", show_progress=False)  # fmt: skip
    return {
        "sources": dict(common, sources=sources, positive_texts=texts, skip={"a": 2, "*": 4}),
        "global": dict(common, skip=3, count_self=False),
        "one_shard": dict(common, skip=3, shard_size=N),  # fewer shards than ranks: the others idle
        "key_blocks": dict(common, skip=3, count_self=False, key_block_size=37),  # "global", blocked
    }


def _failure_checks(rank: int, q, p, options) -> None:
    from hardbatch.mining.distributed import mine_b3_hierarchical_distributed as mine
    from hardbatch.mining.hierarchical import HierarchicalRun

    original_mine, original_merge = HierarchicalRun.mine, HierarchicalRun.merge
    # A rank > 0 fails while mining its shards: a user error travels as itself...
    if rank == 1:
        HierarchicalRun.mine = failing("row 5: unreadable embedding")
    promptly(DataError, "row 5: unreadable embedding", lambda: mine(q, p, **options))
    # ... any other exception as a RuntimeError naming the rank (the failing rank raises its own).
    if rank == 1:
        HierarchicalRun.mine = failing("out of memory")
    expected = "out of memory" if rank == 1 else "rank 1 failed while mining its hierarchical shards"
    promptly(RuntimeError, expected, lambda: mine(q, p, **options))
    HierarchicalRun.mine = original_mine
    # Rank 1 reads a truncated copy of the positives.
    promptly(DataError, r"positive embeddings on rank 1: shape \(699, 12\)",
             lambda: mine(q, p[:-1] if rank == 1 else p, **options))  # fmt: skip
    # Rank 0 fails alone while cutting the shards (shard_size < K is found by the k-means step only).
    promptly(ConfigError, "shard_size=5", lambda: mine(q, p, **{**options, "shard_size": 5}))
    # Rank 0 fails while merging: the other ranks do not return None as if all went well.
    if rank == 0:
        HierarchicalRun.merge = failing("merge bug")
    expected = "merge bug" if rank == 0 else "rank 0 failed while merging the hierarchical shard plans"
    promptly(RuntimeError, expected, lambda: mine(q, p, **options))
    HierarchicalRun.merge = original_merge
    # Every rank's own bad option, found before the shards are cut.
    promptly(ConfigError, "multiple of K", lambda: mine(q, p, **{**options, "batch_size": 25}))
    promptly(
        ConfigError, "too small for the exact kNN", lambda: mine(q, p, **{**options, "memory_budget": "1KiB"})
    )


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from hardbatch.mining.distributed import mine_b3_hierarchical_distributed
    from hardbatch.mining.hierarchical import mine_b3_hierarchical

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=TIMEOUT))  # fmt: skip
    try:
        q = np.load(os.path.join(out_dir, "q.npy"), mmap_mode="r")  # each rank reads its shards' rows
        p = np.load(os.path.join(out_dir, "p.npy"), mmap_mode="r")
        _, _, sources, texts = _data()
        runs = _runs(sources, texts)
        if world == 2:
            _failure_checks(rank, q, p, runs["global"])
        else:
            del runs["key_blocks"]  # once is enough (2 ranks): 3 ranks run the same code
        for name, options in runs.items():
            plan = mine_b3_hierarchical_distributed(q, p, **options)
            if rank == 0:
                plan.save(os.path.join(out_dir, f"{name}-{world}.parquet"))
                mine_b3_hierarchical(q, p, **options).save(os.path.join(out_dir, f"{name}-single.parquet"))
            else:
                assert plan is None
    finally:
        dist.destroy_process_group()


def _check_invariants(plan: BatchPlan, sources: np.ndarray | None) -> None:
    assert plan.clusters.shape[1] == K
    every = np.concatenate([plan.clusters.reshape(-1), plan.remainder])
    np.testing.assert_array_equal(np.sort(every), np.arange(N))  # each example exactly once
    if sources is not None:
        names = np.asarray(plan.source_names)
        assert (sources[plan.clusters] == names[plan.cluster_sources][:, None]).all()  # one source a cluster
        np.testing.assert_array_equal(sources[plan.remainder], names[plan.remainder_sources])
        assert (sources[plan.remainder] == "c").sum() == 15


def _assert_same_plan(spread: BatchPlan, single: BatchPlan, world: int) -> None:
    np.testing.assert_array_equal(spread.clusters, single.clusters)
    np.testing.assert_array_equal(spread.remainder, single.remainder)
    for name in ("cluster_sources", "remainder_sources"):
        left, right = getattr(spread, name), getattr(single, name)
        assert (left is None and right is None) or np.array_equal(left, right)
    assert spread.source_names == single.source_names
    assert spread.hashes == single.hashes
    assert {**spread.params, "world_size": None} == {**single.params, "world_size": None}
    assert spread.params["world_size"] == world
    for key in ("graph", "partition", "hardness", "num_clusters", "remainder"):
        assert spread.stats[key] == single.stats[key], key
    # Spread indeed: every rank with a shard mined it, and the seconds of every rank are reported.
    ranks = {shard["rank"] for shard in spread.stats["shards"]}
    assert ranks == set(range(min(world, len(spread.stats["shards"]))))
    assert len(spread.stats["rank_seconds"]) == world


@pytest.mark.parametrize("world", [2, 3])
def test_spread_shards_give_the_one_process_plan(tmp_path, world):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    q, p, sources, _ = _data()
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "p.npy", p)
    mp.spawn(_worker, args=(world, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=world, join=True)
    for name in ("sources", "global", "one_shard", *(["key_blocks"] if world == 2 else [])):
        spread = BatchPlan.load(tmp_path / f"{name}-{world}.parquet")
        single = BatchPlan.load(tmp_path / f"{name}-single.parquet")
        _assert_same_plan(spread, single, world)
        _check_invariants(spread, sources if name == "sources" else None)
    if world == 2:  # key blocks reach every rank's shards and give the unblocked plan
        blocked = BatchPlan.load(tmp_path / "key_blocks-2.parquet")
        unblocked = BatchPlan.load(tmp_path / "global-single.parquet")
        np.testing.assert_array_equal(blocked.clusters, unblocked.clusters)
        assert all(
            shard["key_block_size"] == 37 and shard["key_blocks"] > 1 for shard in blocked.stats["shards"]
        )
        assert {shard["rank"] for shard in blocked.stats["shards"]} == {0, 1}
    assert BatchPlan.load(tmp_path / f"sources-{world}.parquet").params["skip"] == {"a": 2, "b": 4, "c": 4}


def _cli(*args: str, world: int) -> subprocess.CompletedProcess:
    launcher = (
        ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world)] if world > 1 else []
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HARDBATCH_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, *launcher, "-m", "hardbatch", *args], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_torchrun_mine_b3_shard_size_writes_the_one_process_plan_once(tmp_path):
    q, p, sources, texts = _data()
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "p.npy", p)
    data = tmp_path / "pairs.jsonl"
    rows = [
        {"query": f"q{i}", "positive": t, "source": str(s)} for i, (t, s) in enumerate(zip(texts, sources))
    ]
    data.write_text("\n".join(json.dumps(row) for row in rows))
    args = ["mine", "b3", str(data), "--query-emb", str(tmp_path / "q.npy"), "--positive-emb",
            str(tmp_path / "p.npy"), "--shard-size", str(SHARD), "-b", "20", "-k", str(K), "--skip", "a=2",
            "--skip-default", "4", "--window", "12", "--precision", "fp32", "--device", "cpu"]  # fmt: skip
    proc = _cli(*args, "-o", str(tmp_path / "spread.parquet"), world=2)
    assert proc.stdout.count("batch plan") == 1  # rank 0 alone prints and writes
    _cli(*args, "-o", str(tmp_path / "single.parquet"), world=1)  # same threads as each rank
    spread, single = BatchPlan.load(tmp_path / "spread.parquet"), BatchPlan.load(tmp_path / "single.parquet")
    np.testing.assert_array_equal(spread.clusters, single.clusters)
    np.testing.assert_array_equal(spread.remainder, single.remainder)
    assert spread.params["world_size"] == 2 and "world_size" not in single.params
    assert (
        spread.params["hierarchical"] == single.params["hierarchical"] == {"shard_size": SHARD, "shards": 6}
    )
    _check_invariants(spread, sources)
