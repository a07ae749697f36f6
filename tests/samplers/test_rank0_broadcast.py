"""Every rank-0 broadcast in hardbatch, under 2 real gloo processes whose inputs differ per rank.

Each rank gets *different* embeddings (and objects), so without the broadcast the ranks would train on
different batches: the GCBS sampler's batches (``sync_ranks``), the B3 sampler's lazily mined plan and its
plan re-mined with a (rank-dependent) student, the student's re-embedding (``model_embed_fn``, whose
forward passes are shared out over the ranks), and the trainer's ``DistContext.broadcast_object`` (resume decision, final-evaluation decision) must all come
out equal to what rank 0 computes alone.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.distributed

N, DIM, BATCH = 96, 16, 16


def _embeddings(rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank-dependent embeddings: the same topics, but each rank's rows are permuted differently."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, DIM))
    topic = np.repeat(np.arange(6), N // 6)
    query = centers[topic] + 0.2 * rng.normal(size=(N, DIM))
    positive = query + 0.1 * rng.normal(size=(N, DIM))
    order = np.random.default_rng(100 + rank).permutation(N)
    return query[order].astype(np.float32), positive[order].astype(np.float32)


def _gcbs(rank: int):
    from hardbatch.samplers import GCBSBatchSampler

    query, positive = _embeddings(rank)
    sampler = GCBSBatchSampler(
        num_examples=N, batch_size=BATCH, query_emb=query, positive_emb=positive, target_degree=8,
        device="cpu", world_size=2, seed=1,
    )  # fmt: skip
    return sampler.batches(0)


def _b3(rank: int):
    from hardbatch.samplers import B3BatchSampler

    query, positive = _embeddings(rank)
    options = {"cluster_size": 8, "skip": 0, "window": 8, "device": "cpu", "show_progress": False}
    sampler = B3BatchSampler(
        num_examples=N, batch_size=BATCH, query_emb=query, positive_emb=positive, mine_options=options,
        world_size=2, seed=1,
    )  # fmt: skip
    return sampler.plan.clusters.tolist(), sampler.batches(0)


def _b3_remine(rank: int):
    """A fixed plan re-mined at epoch 1 with a rank-dependent "student": every rank must get rank 0's."""
    from hardbatch.mining import mine_b3
    from hardbatch.samplers import B3BatchSampler

    options = {"cluster_size": 8, "skip": 0, "window": 8, "device": "cpu", "show_progress": False}
    plan = mine_b3(*_embeddings(0), batch_size=BATCH, **options)
    sampler = B3BatchSampler(
        num_examples=N, batch_size=BATCH, plan=plan, remine_every=1, embed_fn=lambda epoch: _embeddings(rank),
        world_size=2, seed=1,
    )  # fmt: skip
    return sampler.batches(1)


def _student_embeddings():
    """model_embed_fn of a tiny model on 22 pairs (6 forward passes of 4 texts per column): what each rank
    gets, and how many passes it ran."""
    from types import SimpleNamespace

    from hardbatch.embed.models import make_tiny_model
    from hardbatch.samplers import model_embed_fn

    model = make_tiny_model(seed=5)
    passes = []
    model[0].register_forward_hook(lambda module, args, out: passes.append(1))
    pairs = SimpleNamespace(
        queries=[f"query {i} " + "word " * (i % 5) for i in range(22)],
        positives=[f"def f{i}(): " + "x " * (i % 3) for i in range(22)],
    )
    query, positive = model_embed_fn(model, pairs, batch_size=4, device="cpu")(0)
    return {"query": query.tolist(), "positive": positive.tolist(), "passes": len(passes)}


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from hardbatch.train.distributed import init_distributed

        ctx = init_distributed("cpu")
        result = {
            "gcbs": _gcbs(rank),
            "b3": _b3(rank),
            "b3_remine": _b3_remine(rank),
            "student": _student_embeddings(),
            "broadcast_object": ctx.broadcast_object({"from": rank, "checkpoint": [rank, f"step-{rank}"]}),
            "gathered": ctx.gather_objects(rank * 10),
            "mean": ctx.mean(float(rank)),
        }
        with open(f"{out_dir}/rank{rank}.json", "w") as handle:
            json.dump(result, handle)
    finally:
        dist.destroy_process_group()


def test_rank0_broadcasts_with_rank_dependent_inputs(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # What rank 0 and rank 1 compute alone (no process group here, so no broadcast).
    alone = [
        {"gcbs": _gcbs(r), "b3": [list(x) for x in _b3(r)], "b3_remine": _b3_remine(r)} for r in range(2)
    ]
    assert alone[0]["gcbs"] != alone[1]["gcbs"] and alone[0]["b3"] != alone[1]["b3"]  # not vacuous
    assert alone[0]["b3_remine"] != alone[1]["b3_remine"]
    single = _student_embeddings()
    assert single["passes"] == 12
    for rank in range(2):
        assert got[rank]["gcbs"] == alone[0]["gcbs"], f"rank {rank}: GCBS batches"
        assert got[rank]["b3"] == alone[0]["b3"], f"rank {rank}: B3 plan"
        assert got[rank]["b3_remine"] == alone[0]["b3_remine"], f"rank {rank}: B3 plan re-mined"
        # The student's re-embedding is shared out: each rank ran half the passes, and got every row.
        student = got[rank]["student"]
        np.testing.assert_allclose(student["query"], single["query"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(student["positive"], single["positive"], rtol=0, atol=1e-6)
        assert student["passes"] == single["passes"] // 2, f"rank {rank}: forward passes"
        assert got[rank]["broadcast_object"] == {"from": 0, "checkpoint": [0, "step-0"]}
        assert got[rank]["gathered"] == [0, 10]
        assert got[rank]["mean"] == pytest.approx(0.5)
