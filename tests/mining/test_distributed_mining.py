"""Distributed B3 mining (gloo, spawned ranks) writes the same plan as one process.

Each rank ranks its shard of the queries; rank 0 gathers the windows, partitions and saves. Wrong sharding
(an off-by-one row offset, self-exclusion on the shard's local index, shards gathered out of order, a source
group sent with the wrong ids) changes the windows and therefore the clusters, which are compared exactly.
With ``exchange="ring"`` each rank reads only its shard of the positives and the shards circulate: a shard
merged under its local instead of its global indices, a missed or repeated shard, or the diagonal dropped in
the wrong shard changes the windows too.
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


def _three_sources():
    """Sources "a", "b" and a group "c" of 5 examples: ring shards of one or two rows (one per rank at W = 4)."""
    sources = _data()[2].copy()
    sources[[7, 50, 121, 200, 299]] = "c"
    return sources


# Key blocks of 47 positives per rank: block boundaries do not line up with the rank shards (150 or 75 rows).
RUNS = (
    ("global", {}),
    ("sources", {"sources": "sources"}),
    ("global_key_blocks", {"key_block_size": 47}),
    ("sources_key_blocks", {"sources": "sources", "key_block_size": 47}),
    ("global_ring", {"exchange": "ring"}),
    ("sources_ring", {"sources": "three_sources", "exchange": "ring"}),
    ("sources_ring_key_blocks", {"sources": "sources", "exchange": "ring", "key_block_size": 47}),
    # bf16 pre-selection (forced: any CPU runs it): each row's answer depends on that row alone, so the
    # ranks' shards and blocks give the one-process bits.
    ("global_ring_bf16", {"exchange": "ring", "precision": "bf16"}),
    ("sources_key_blocks_bf16", {"sources": "sources", "key_block_size": 47, "precision": "bf16"}),
)


def _resolved(extra: dict) -> dict:
    named = {"sources": _data()[2], "three_sources": _three_sources()}
    return {key: named.get(value, value) if key == "sources" else value for key, value in extra.items()}


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from hardbatch.mining.distributed import mine_b3_distributed

        q, p, _ = _data()
        for name, extra in RUNS:
            extra = _resolved(extra)
            plan = mine_b3_distributed(q, p, **{"precision": "fp32", **OPTIONS, **extra})
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
    q, p, _ = _data()
    for name, extra in RUNS:
        extra = _resolved(extra)
        blocked = extra.pop("key_block_size", None) is not None  # the single-process reference holds all
        ring = extra.pop("exchange", "read") == "ring"
        single = mine_b3(q, p, **{"precision": "fp32", **OPTIONS, **extra})
        loaded = BatchPlan.load(tmp_path / f"{name}.parquet")
        np.testing.assert_array_equal(loaded.clusters, single.clusters)
        np.testing.assert_array_equal(np.sort(loaded.remainder), np.sort(single.remainder))
        assert loaded.params["world_size"] == world
        infos = loaded.stats["knn_info"]
        for info in infos if isinstance(infos, list) else [infos]:  # rank 0's search really used key blocks
            if blocked:  # a ring shard (N/W rows of a group) may be smaller than one block of 47
                assert "key_block_size" in info and (ring or info["key_blocks"] > 1), name
            else:
                assert "key_blocks" not in info, name
            assert info.get("exchange") == ("ring" if ring else None)
            assert info.get("ring_steps") == (world if ring else None)
            assert info["precision"] == extra.get("precision", "fp32"), name


def test_ring_merge_in_row_chunks_equals_one_merge(monkeypatch):
    """The ring's running top k, merged a few rows at a time, is the merge of all rows at once."""
    import hardbatch.mining.distributed as distributed
    from hardbatch.graph.topk import merge_topk

    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=(50, 12)), 1).astype(np.float32)  # rounded: ties across the two lists
    ids = rng.permuted(np.tile(np.arange(24, dtype=np.int32), (50, 1)), axis=1)  # disjoint halves per row
    a_ids, b_ids = ids[:, :6], ids[:, 6:12]
    a = -np.sort(-scores[:, :6], axis=1)
    b = -np.sort(-scores[:, 6:], axis=1)
    monkeypatch.setattr(distributed, "_MERGE_ROWS", 7)  # 50 rows: 8 chunks, the last one short
    merged_scores, merged_ids = distributed._merge_rows(a, a_ids, b, b_ids, 8)
    values, top = merge_topk(torch.from_numpy(a), torch.from_numpy(a_ids), torch.from_numpy(b),
                             torch.from_numpy(b_ids), 8)  # fmt: skip
    np.testing.assert_array_equal(merged_scores, values.numpy())
    np.testing.assert_array_equal(merged_ids, top.numpy())
    assert merged_ids.dtype == np.int32 and merged_ids.shape == (50, 8)


def _gather_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from hardbatch.mining.distributed import _gather_parts

        for name, lengths in (("uneven", [4, 1, 3]), ("even", [2, 2, 2]), ("empty", [2, 0, 1])):
            ids = np.arange(sum(lengths[:rank]), sum(lengths[: rank + 1]), dtype=np.int32)
            part = np.stack([ids * 10, ids * 10 + 1], axis=1).astype(np.int32)
            whole = _gather_parts(part, lengths, torch.int32)
            values = _gather_parts(part.astype(np.float32) / 4, lengths, torch.float32)
            if rank == 0:
                np.save(os.path.join(out_dir, f"{name}_ids.npy"), whole)
                np.save(os.path.join(out_dir, f"{name}_values.npy"), values)
            else:
                assert whole is None and values is None
    finally:
        dist.destroy_process_group()


def test_gather_parts_concatenates_in_rank_order(tmp_path):
    """Padded parts of unequal (and empty) lengths come back on rank 0 as one array, in the input dtype."""
    mp.spawn(_gather_worker, args=(3, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=3, join=True)
    for name, total in (("uneven", 8), ("even", 6), ("empty", 3)):
        ids, values = np.load(tmp_path / f"{name}_ids.npy"), np.load(tmp_path / f"{name}_values.npy")
        rows = np.arange(total)
        expected = np.stack([rows * 10, rows * 10 + 1], axis=1)
        assert ids.dtype == np.int32 and values.dtype == np.float32
        np.testing.assert_array_equal(ids, expected)
        np.testing.assert_array_equal(values, expected / 4)
