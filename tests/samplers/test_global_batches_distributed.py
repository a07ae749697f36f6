"""Global batches with 2 real gloo ranks: the union of the ranks' slices of every step is the single-process
batch of the global size (B3 with its B3++ negatives, and GCBS), sharded exactly as the trainer shards."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from properties import planted_embeddings

from hardbatch.mining import BatchPlan, mine_b3
from hardbatch.samplers import B3BatchSampler, GCBSBatchSampler
from hardbatch.train.trainer import Trainer

WORLD, B, K, H = 2, 8, 4, 2


def _steps(sampler, rank: int) -> list[list[int]]:
    """This rank's batches of one epoch, through the trainer's own sharding."""
    return list(
        Trainer._rank_batches(SimpleNamespace(sampler=sampler), SimpleNamespace(world_size=WORLD, rank=rank))
    )


def _worker(rank: int, plan_path: str, emb_path: str, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        out: dict[str, list] = {}
        b3 = B3BatchSampler(num_examples=203, batch_size=B, plan=plan_path, num_hard_negatives=H, seed=1)
        assert b3.world_size == WORLD  # taken from the process group
        for epoch in (0, 1):
            b3.set_epoch(epoch)
            out[f"b3-{epoch}"] = [(batch, b3.hard_negatives(batch)) for batch in _steps(b3, rank)]
        q, p = np.load(emb_path)
        gcbs = GCBSBatchSampler(
            num_examples=203, batch_size=B, query_emb=q, positive_emb=p, target_degree=8, device="cpu", seed=2
        )
        out["gcbs"] = _steps(gcbs, rank)
        gathered: list = [None] * WORLD
        dist.all_gather_object(gathered, out)
        if rank == 0:
            torch.save(gathered, os.path.join(os.path.dirname(init_file), "gathered.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_train_on_the_single_process_global_batch(tmp_path):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    query, positive, _ = planted_embeddings(num_topics=7, per_topic=29, seed=1)
    sources = np.array(["alpha"] * 90 + ["beta"] * 113)
    plan = mine_b3(
        query, positive, batch_size=B, cluster_size=K, skip=2, window=12, sources=sources, device="cpu"
    )
    plan.save(tmp_path / "plan.parquet")
    np.save(tmp_path / "emb.npy", np.stack([query, positive]))
    mp.spawn(
        _worker,
        args=(str(tmp_path / "plan.parquet"), str(tmp_path / "emb.npy"), str(tmp_path / "rendezvous")),
        nprocs=WORLD,
        join=True,
    )
    ranks = torch.load(tmp_path / "gathered.pt", weights_only=False)

    loaded = BatchPlan.load(tmp_path / "plan.parquet")
    single = B3BatchSampler(num_examples=203, batch_size=B * WORLD, plan=loaded, num_hard_negatives=H, seed=1)
    for epoch in (0, 1):
        expected = single.batches(epoch)
        steps = list(zip(*(r[f"b3-{epoch}"] for r in ranks)))
        assert len(steps) == len(expected) > 0
        for step, whole in zip(steps, expected):
            assert [i for batch, _ in step for i in batch] == whole
            assert np.unique(sources[whole]).size == 1  # one source per step, on both ranks
            negatives = [i for _, negs in step for i in negs]
            assert negatives == single.hard_negatives(whole, epoch=epoch)
            assert len(negatives) == H * B * WORLD and not set(negatives) & set(whole)

    gcbs = GCBSBatchSampler(
        num_examples=203, batch_size=B * WORLD, query_emb=query, positive_emb=positive, target_degree=8,
        device="cpu", seed=2,
    )  # fmt: skip
    expected = [b for b in gcbs.batches(0) if len(b) == B * WORLD]
    steps = list(zip(*(r["gcbs"] for r in ranks)))
    assert [step[0] + step[1] for step in steps] == expected
