"""Distributed info_nce (gloo, spawned processes) equals the single-process loss on the concatenated batch.

One spawn of 4 processes covers both world sizes: the checks run on the 4-rank world group and, at the same
time, on two 2-rank subgroups ({0, 1} and {2, 3}), which also exercises non-default process groups.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from hardbatch.errors import ConfigError
from hardbatch.losses import info_nce, reference_info_nce, stacked_keys
from hardbatch.losses.gradcache import cached_loss

pytestmark = pytest.mark.distributed

LOCAL_B, NEGATIVES, DIM = 5, 1, 6


def _global_batch(world: int, seed: int):
    """Queries (W·b, d) and per-rank stacked keys (positives then negatives of that rank's queries)."""
    gen = torch.Generator().manual_seed(seed)
    queries = F.normalize(torch.randn(world * LOCAL_B, DIM, generator=gen), dim=-1)
    positives = F.normalize(queries + 0.7 * torch.randn(world * LOCAL_B, DIM, generator=gen), dim=-1)
    negatives = F.normalize(torch.randn(world * LOCAL_B, NEGATIVES, DIM, generator=gen), dim=-1)
    key_shards, label_shards = [], []
    for r in range(world):
        rows = slice(r * LOCAL_B, (r + 1) * LOCAL_B)
        keys, labels = stacked_keys(positives[rows], negatives[rows])
        key_shards.append(keys)
        label_shards.append(labels)
    # Few distinct ids: cross-rank collisions exercise the mask on gathered keys.
    key_ids = torch.randint(0, 4, (world * key_shards[0].shape[0],), generator=gen)
    return queries, key_shards, label_shards, key_ids


def _single_process(fn, queries, key_shards, label_shards, key_ids, scale, reduction):
    n_local = key_shards[0].shape[0]
    keys = torch.cat(key_shards)
    labels = torch.cat([lab + r * n_local for r, lab in enumerate(label_shards)])
    q = queries.clone().requires_grad_()
    k = keys.clone().requires_grad_()
    s = torch.tensor(scale, requires_grad=True)
    loss = fn(q, k, labels, scale=s, query_ids=key_ids[labels], key_ids=key_ids, reduction=reduction)
    loss.sum().backward()
    return loss.detach(), q.grad, k.grad, s.grad


def _check_loss(fn, group, world, rank, seed, reduction):
    queries, key_shards, label_shards, key_ids = _global_batch(world, seed)
    want_loss, want_dq, want_dk, want_ds = _single_process(
        reference_info_nce, queries, key_shards, label_shards, key_ids, 20.0, reduction
    )
    n_local = key_shards[0].shape[0]
    rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
    local_ids = key_ids[rank * n_local : (rank + 1) * n_local]
    q = queries[rows].clone().requires_grad_()
    k = key_shards[rank].clone().requires_grad_()
    s = torch.tensor(20.0, requires_grad=True)
    labels = label_shards[rank]
    loss = fn(
        q,
        k,
        labels,
        scale=s,
        query_ids=local_ids[labels],
        key_ids=local_ids,
        group=group,
        reduction=reduction,
    )
    loss.sum().backward()
    if reduction == "none":
        torch.testing.assert_close(loss.detach(), want_loss[rows], rtol=1e-5, atol=1e-5)
    else:
        total = loss.detach().clone()
        dist.all_reduce(total, group=group)
        torch.testing.assert_close(
            total / (world if reduction == "mean" else 1), want_loss, rtol=1e-5, atol=1e-5
        )
    # Embeddings get the gradient of Σ_r L_r: W · ∇(global mean) for "mean", ∇(global sum) otherwise.
    factor = float(world) if reduction == "mean" else 1.0
    torch.testing.assert_close(q.grad, factor * want_dq[rows], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        k.grad, factor * want_dk[rank * n_local : (rank + 1) * n_local], rtol=1e-4, atol=1e-5
    )
    # The scale's gradient is averaged over ranks inside backward: every rank holds ∇ (1/W)·Σ_r L_r.
    torch.testing.assert_close(s.grad, want_ds * factor / world, rtol=1e-4, atol=1e-5)


def _check_ddp(group, world, rank):
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, DIM))
    reference = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, DIM))
    reference.load_state_dict(encoder.state_dict())
    gen = torch.Generator().manual_seed(123)
    x_query = torch.randn(world * LOCAL_B, 8, generator=gen)
    x_key = torch.randn(world * LOCAL_B * 2, 8, generator=gen)  # positives + one hard negative per query
    ddp = torch.nn.parallel.DistributedDataParallel(encoder, process_group=group)
    rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
    local_keys = torch.cat([x_key[: world * LOCAL_B][rows], x_key[world * LOCAL_B :][rows]])
    loss = info_nce(ddp(x_query[rows]), ddp(local_keys), scale=5.0, group=group, tile_size=3)
    loss.backward()
    # Single process on the whole batch, keys in the stacked order of the concatenated shards.
    all_keys = torch.cat(
        [
            torch.cat(
                [
                    x_key[: world * LOCAL_B][r * LOCAL_B : (r + 1) * LOCAL_B],
                    x_key[world * LOCAL_B :][r * LOCAL_B : (r + 1) * LOCAL_B],
                ]
            )
            for r in range(world)
        ]
    )
    labels = torch.cat([torch.arange(LOCAL_B) + r * 2 * LOCAL_B for r in range(world)])
    reference_info_nce(reference(x_query), reference(all_keys), labels, scale=5.0).backward()
    for got, want in zip(encoder.parameters(), reference.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-5)


def _check_ddp_gradcache(group, world, rank):
    """GradCache under DDP (no_sync except the last chunk) + distributed loss = single-process gradient."""
    torch.manual_seed(1)
    encoder = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, DIM))
    reference = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, DIM))
    reference.load_state_dict(encoder.state_dict())
    gen = torch.Generator().manual_seed(7)
    x_query, x_key = (
        torch.randn(world * LOCAL_B, 8, generator=gen),
        torch.randn(world * LOCAL_B, 8, generator=gen),
    )
    rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
    ddp = torch.nn.parallel.DistributedDataParallel(encoder, process_group=group)
    loss = cached_loss(
        ddp, [x_query[rows], x_key[rows]], lambda q, k: info_nce(q, k, scale=4.0, group=group), chunk_size=2
    )
    loss.backward()
    info_nce(reference(x_query), reference(x_key), scale=4.0).backward()
    for got, want in zip(encoder.parameters(), reference.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-6)


def _check_unequal_shards(group, rank):
    rows = LOCAL_B + (1 if rank == 0 else 0)
    try:
        info_nce(torch.randn(rows, DIM), torch.randn(rows, DIM), group=group, distributed="gather")
    except ConfigError as error:
        assert "equal-size shards" in str(error) and "rank 0" in str(error)
    else:
        raise AssertionError("unequal shards must raise ConfigError with distributed='gather'")


def _worker(rank: int, world: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]
        for group, size, local_rank in ((None, world, rank), (pairs[rank // 2], 2, rank % 2)):
            group = group if group is not None else dist.group.WORLD
            for reduction in ("mean", "none"):
                _check_loss(info_nce, group, size, local_rank, seed=size, reduction=reduction)
            _check_loss(reference_info_nce, group, size, local_rank, seed=size + 1, reduction="sum")
            _check_ddp(group, size, local_rank)
            _check_ddp_gradcache(group, size, local_rank)
            _check_unequal_shards(group, local_rank)
    finally:
        dist.destroy_process_group()


def test_distributed_matches_single_process_on_2_and_4_ranks(tmp_path):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(4, str(tmp_path / "rendezvous")), nprocs=4, join=True)
