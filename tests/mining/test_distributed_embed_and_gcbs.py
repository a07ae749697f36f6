"""Ranks embedding their own share of the pairs, and distributed GCBS, equal one process (gloo, spawned ranks).

One spawn serves every check (importing sentence-transformers in each rank is the slow part):

* :func:`hardbatch.embed.sharded.embed_pairs_sharded` gives every rank the very floats of a single-process
  :func:`~hardbatch.embed.pairs.embed_pairs` (compared bit for bit in the same process, same threads), so a
  wrong share (batches lost or encoded twice, rows scattered to the wrong ids, duplicates not expanded,
  prompts dropped, texts re-batched) fails; the B3 plan mined from them equals the one-process plan. Only rank
  0 may write the cache (the other ranks' writer raises), a valid cache is read without encoding anything,
  a rank that cannot read it gets rank 0's rows, and a stale cache with ``on_stale="error"`` raises on
  every rank, and so does a failure while one rank encodes. A single batch (fewer batches than ranks) is
  checked too.
* :func:`hardbatch.mining.distributed.mine_gcbs_distributed` gives the same threshold, graph statistics,
  order and batches as :func:`~hardbatch.mining.gcbs.mine_gcbs`, with a sampled quantile (a threshold taken
  from a rank's own sample, or a diagonal dropped at the shard's local index, changes them) on uneven
  shards, and refuses a too dense graph as one process does (on every rank; more failures in
  ``tests/mining/test_distributed_gcbs.py``).
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hardbatch.errors import ConfigError, DataError
from hardbatch.mining import mine_b3
from hardbatch.mining.gcbs import mine_gcbs
from hardbatch.mining.plan import BatchPlan

pytestmark = pytest.mark.distributed

B3_OPTIONS = dict(batch_size=12, cluster_size=6, skip=2, window=10, seed=0, device="cpu", show_progress=False)
GCBS_CASES = {
    "sampled": dict(target_degree=8, sample_size=4000, seed=3),
    "exact_quantile": dict(quantile=0.99, seed=0),
    # Each rank reads its shard only and the normalised positive shards circulate: the same graph.
    "sampled_ring": dict(target_degree=8, sample_size=4000, seed=3, exchange="ring"),
    "exact_quantile_ring": dict(quantile=0.99, seed=0, exchange="ring"),
}


def _pairs() -> SimpleNamespace:
    """84 pairs with repeated texts and lengths from 1 to ~20 words, so the batches' padding differs."""
    topics = ["sort a list", "read a file", "parse json", "open a socket", "add two numbers", "reverse text"]
    queries, positives = [], []
    for i in range(84):
        topic = topics[i % len(topics)]
        queries.append(f"how do I {topic}" + " quickly" * (i % 7) if i % 5 else f"how do I {topic}")
        positives.append(f"def f{i % 40}(): # {topic} " + "step " * (i % 11))
    return SimpleNamespace(queries=queries, positives=positives)


def _gcbs_data():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(15, 24))
    topic = rng.integers(0, 15, 301)  # odd N: uneven shards
    q = centres[topic] + 0.4 * rng.normal(size=(301, 24))
    p = q + 0.4 * rng.normal(size=q.shape)
    return q.astype(np.float32), p.astype(np.float32)


def _fail(*args, **kwargs):
    raise AssertionError("called where it must not be")


def _unreadable(*args, **kwargs):
    raise DataError("row 7: unreadable image")


def _embedding_checks(rank: int, model_dir: str, out_dir: str) -> None:
    import hardbatch.embed.sharded as sharded
    from hardbatch.embed import embed_pairs
    from hardbatch.embed.cache import read_cache
    from hardbatch.errors import StaleCacheError
    from hardbatch.mining.distributed import mine_b3_distributed

    pairs, cache = _pairs(), os.path.join(out_dir, "cache")
    options = dict(batch_size=8, max_seq_length=24, show_progress=False, device="cpu", query_prompt="q: ")
    writer = sharded.save_embeddings
    if rank != 0:
        sharded.save_embeddings = _fail  # only rank 0 writes the cache
    emb = sharded.embed_pairs_sharded(pairs, model_dir, cache, **options)
    sharded.save_embeddings = writer
    dist.barrier()
    single = embed_pairs(pairs, model_dir, os.path.join(out_dir, f"single{rank}"), **options)
    assert np.array_equal(emb.query, single.query) and np.array_equal(emb.positive, single.positive)
    assert not np.array_equal(single.query[0], single.query[1])  # distinct texts, distinct rows

    # A valid cache: nothing is encoded, every rank memory-maps rank 0's file.
    encoder = sharded.encode_batch
    sharded.encode_batch = _fail
    hit = sharded.embed_pairs_sharded(pairs, model_dir, cache, **options)
    assert isinstance(hit.query, np.memmap) and np.array_equal(hit.query, single.query)
    # A rank that cannot read the cache (a directory local to rank 0's node) receives rank 0's rows.
    if rank == 1:
        sharded.read_cache = lambda *a, **k: None
    sent = sharded.embed_pairs_sharded(pairs, model_dir, cache, **options)
    assert np.array_equal(sent.positive, single.positive)
    sharded.read_cache = read_cache
    # A stale cache with on_stale="error" raises on every rank, not only on the rank that read it.
    with pytest.raises(StaleCacheError, match="max_seq_length"):
        sharded.embed_pairs_sharded(
            pairs, model_dir, cache, **{**options, "max_seq_length": 16}, on_stale="error"
        )
    sharded.encode_batch = encoder

    # A rank that fails while encoding (an unreadable image, say) stops every rank with the same error,
    # instead of leaving the others waiting in the exchange.
    if rank == 1:
        sharded.encode_batch = _unreadable
    with pytest.raises(DataError, match="row 7: unreadable"):
        sharded.embed_pairs_sharded(pairs, model_dir, os.path.join(out_dir, "failing"), **options)
    sharded.encode_batch = encoder

    # One batch for two ranks: the rank without batches learns d from the other.
    few = SimpleNamespace(queries=["a", "b b", "a"], positives=["x", "y", "z z"])
    small = sharded.embed_pairs_sharded(few, model_dir, os.path.join(out_dir, "few"), **options)
    reference = embed_pairs(few, model_dir, os.path.join(out_dir, f"few-single{rank}"), **options)
    assert np.array_equal(small.query, reference.query) and small.query.shape == (3, 32)

    plan = mine_b3_distributed(emb.query, emb.positive, precision="fp32", **B3_OPTIONS)
    if rank == 0:
        plan.save(os.path.join(out_dir, "b3.parquet"))
        np.save(os.path.join(out_dir, "query.npy"), single.query)
        np.save(os.path.join(out_dir, "positive.npy"), single.positive)


def _gcbs_checks(rank: int, out_dir: str) -> None:
    from hardbatch.mining.distributed import mine_gcbs_distributed

    q, p = _gcbs_data()
    for name, options in GCBS_CASES.items():
        result = mine_gcbs_distributed(q, p, 20, device="cpu", show_progress=False, **options)
        if rank == 0:
            assert result.params["world_size"] == dist.get_world_size()
            result.to_plan().save(os.path.join(out_dir, f"gcbs-{name}.parquet"))
            np.save(os.path.join(out_dir, f"gcbs-{name}-order.npy"), result.order)
            with open(os.path.join(out_dir, f"gcbs-{name}-stats.json"), "w") as handle:
                json.dump(result.stats, handle)
        else:
            assert result is None
    for exchange in ("read", "ring"):
        with pytest.raises(ConfigError, match="edges per row"):  # on every rank, as rank 0 decides it
            mine_gcbs_distributed(
                q, p, 20, target_degree=8, max_avg_degree=2.0, device="cpu", exchange=exchange
            )


def _worker(rank: int, world: int, init_file: str, model_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    # A short timeout: a rank left waiting by a failure elsewhere fails the test instead of hanging it.
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        _gcbs_checks(rank, out_dir)
        _embedding_checks(rank, model_dir, out_dir)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_sharded_embeddings_and_gcbs_equal_single_process(tmp_path, tiny_model, world):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    model_dir = tmp_path / "teacher"
    tiny_model.save(str(model_dir))
    args = (world, str(tmp_path / "rendezvous"), str(model_dir), str(tmp_path))
    mp.spawn(_worker, args=args, nprocs=world, join=True)

    q, p = _gcbs_data()
    for name, options in GCBS_CASES.items():
        options = {key: value for key, value in options.items() if key != "exchange"}
        single = mine_gcbs(q, p, 20, device="cpu", show_progress=False, **options)
        np.testing.assert_array_equal(np.load(tmp_path / f"gcbs-{name}-order.npy"), single.order)
        stats = json.loads((tmp_path / f"gcbs-{name}-stats.json").read_text())
        assert stats == json.loads(json.dumps(single.stats))
        plan = BatchPlan.load(tmp_path / f"gcbs-{name}.parquet")
        assert plan.params["world_size"] == world and plan.params["threshold"] == single.threshold
        np.testing.assert_array_equal(plan.clusters, single.to_plan().clusters)

    query, positive = np.load(tmp_path / "query.npy"), np.load(tmp_path / "positive.npy")
    single_plan = mine_b3(query, positive, precision="fp32", **B3_OPTIONS)
    loaded = BatchPlan.load(tmp_path / "b3.parquet")
    np.testing.assert_array_equal(loaded.clusters, single_plan.clusters)
    assert loaded.params["world_size"] == world
