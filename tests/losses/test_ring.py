"""distributed="ring" / "gather" / "auto" for info_nce and sigmoid_loss (gloo, spawned processes).

One spawn of 4 processes covers 4 ranks (world group) and 2 ranks (subgroups {0, 1} and {2, 3}). Every
case is compared with ONE process on the concatenated batch (the materialising references), at awkward
local sizes: odd b, unequal b and n per rank (ring only), hard-negative key columns, a false-negative id
mask with cross-rank collisions and queries sharing a positive; plus bf16 blocks on the wire and a DDP
encoder trained through the ring losses (learnable SigmoidLoss included).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from hardbatch.errors import ConfigError
from hardbatch.losses import (
    InfoNCELoss,
    SigmoidLoss,
    info_nce,
    reference_info_nce,
    reference_sigmoid_loss,
    sigmoid_loss,
)
from hardbatch.losses import ring as ring_module

pytestmark = pytest.mark.distributed

DIM = 5


def _shards(world: int, seed: int, equal: bool):
    """Per-rank (queries, keys, labels, ids) and their single-process concatenation.

    Unequal: rank r holds 2r + 3 queries (odd) and r extra hard-negative keys; one rank has two queries
    sharing a positive.
    """
    gen = torch.Generator().manual_seed(seed)
    shards = []
    for r in range(world):
        b = 3 if equal else 2 * r + 3
        extra = 2 if equal else r
        q = F.normalize(torch.randn(b, DIM, generator=gen), dim=-1)
        k = F.normalize(
            torch.cat([q + 0.6 * torch.randn(b, DIM, generator=gen), torch.randn(extra, DIM, generator=gen)]),
            dim=-1,
        )
        labels = torch.arange(b)
        if not equal and r == world - 1:
            labels[1] = labels[0]  # shared positive
        key_ids = torch.randint(0, 4, (k.shape[0],), generator=gen)  # few ids: collisions across ranks
        shards.append((q, k, labels, key_ids))
    offsets = torch.tensor([0] + [s[1].shape[0] for s in shards]).cumsum(0)
    whole = (
        torch.cat([s[0] for s in shards]),
        torch.cat([s[1] for s in shards]),
        torch.cat([s[2] + offsets[r] for r, s in enumerate(shards)]),
        torch.cat([s[3] for s in shards]),
    )
    return shards, whole


def _call(fn, q, k, labels, key_ids, params, **kwargs):
    if fn in (info_nce, reference_info_nce):
        return fn(q, k, labels, scale=params[0], query_ids=key_ids[labels], key_ids=key_ids, **kwargs)
    return fn(q, k, params[0], params[1], labels=labels, query_ids=key_ids[labels], key_ids=key_ids, **kwargs)


def _grads(loss, q, k, params):
    return torch.autograd.grad(loss, [q, k, *params])


def _check(fn, reference, group, world, rank, seed, equal, mode, reduction, **kwargs):
    shards, whole = _shards(world, seed, equal)
    sizes = [s[0].shape[0] for s in shards]
    # Single process: per-query losses; rank r's mean weighs its rows by 1 / b_r (local-loss convention).
    wq, wk = whole[0].clone().requires_grad_(), whole[1].clone().requires_grad_()
    wparams = [torch.tensor(7.0, requires_grad=True), torch.tensor(-2.0, requires_grad=True)]
    per_row = _call(reference, wq, wk, whole[2], whole[3], wparams, reduction="none", **kwargs)
    weights = torch.cat([torch.full((b,), 1.0 / b if reduction == "mean" else 1.0) for b in sizes])
    want = _grads((per_row * weights).sum(), wq, wk, wparams[: 1 if reference is reference_info_nce else 2])
    q, k, labels, key_ids = shards[rank]
    q, k = q.clone().requires_grad_(), k.clone().requires_grad_()
    params = [torch.tensor(7.0, requires_grad=True), torch.tensor(-2.0, requires_grad=True)]
    used = params[: 1 if fn is info_nce else 2]
    loss = _call(
        fn,
        q,
        k,
        labels,
        key_ids,
        params,
        group=group,
        distributed=mode,
        reduction=reduction,
        tile_size=2,
        **kwargs,
    )
    got = _grads(loss.sum(), q, k, used)
    rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
    key_start = sum(s[1].shape[0] for s in shards[:rank])
    keys = slice(key_start, key_start + k.shape[0])
    local_want = per_row[rows].detach()
    local_want = (
        local_want.mean() if reduction == "mean" else local_want.sum() if reduction == "sum" else local_want
    )
    tag = f"{fn.__name__} {mode} {reduction} world={world} rank={rank} equal={equal}"
    torch.testing.assert_close(loss.detach(), local_want, rtol=1e-5, atol=1e-5, msg=lambda m: f"{tag}: {m}")
    torch.testing.assert_close(got[0], want[0][rows], rtol=1e-4, atol=1e-5, msg=lambda m: f"{tag} dq: {m}")
    torch.testing.assert_close(got[1], want[1][keys], rtol=1e-4, atol=1e-5, msg=lambda m: f"{tag} dk: {m}")
    # Shared scale / bias: gradient of (1/W)·Σ_r L_r on every rank.
    for got_p, want_p in zip(got[2:], want[2:]):
        torch.testing.assert_close(
            got_p, want_p / world, rtol=1e-4, atol=1e-5, msg=lambda m: f"{tag} dparam: {m}"
        )


def _check_modes(group, world, rank):
    seed = 10 * world
    for mode in ("ring", "gather", "auto"):
        _check(info_nce, reference_info_nce, group, world, rank, seed, True, mode, "mean")
        _check(sigmoid_loss, reference_sigmoid_loss, group, world, rank, seed + 1, True, mode, "mean")
    _check(info_nce, reference_info_nce, group, world, rank, seed + 2, True, "ring", "none", symmetric=False)
    # Unequal shards: ring (and auto, which must pick it) only.
    for mode in ("ring", "auto"):
        _check(info_nce, reference_info_nce, group, world, rank, seed + 3, False, mode, "mean")
        _check(sigmoid_loss, reference_sigmoid_loss, group, world, rank, seed + 4, False, mode, "sum")
    _check(info_nce, reference_info_nce, group, world, rank, seed + 5, False, "ring", "none", symmetric=False)
    shards, _ = _shards(world, seed, equal=False)
    q, k, labels, _ = shards[rank]
    for fn in (
        lambda: info_nce(q, k, labels, group=group, distributed="gather"),
        lambda: sigmoid_loss(q, k, 1.0, 0.0, labels=labels, group=group, distributed="gather"),
    ):
        with pytest.raises(ConfigError, match="equal-size shards"):
            fn()
    with pytest.raises(ConfigError, match="distributed"):
        info_nce(q, k, labels, group=group, distributed="allgather")
    # The module passes its mode on: ring takes unequal shards, gather refuses them.
    want = info_nce(q, k, labels, scale=9.0, group=group, distributed="ring")
    torch.testing.assert_close(InfoNCELoss(9.0, group=group, distributed="ring")(q, k, labels), want)
    with pytest.raises(ConfigError, match="equal-size shards"):
        InfoNCELoss(9.0, group=group, distributed="gather")(q, k, labels)


def _check_bf16_ring_equals_gather(group, rank):
    """bf16 key blocks travel the ring as bf16; results equal the gather path's to bf16 rounding.

    Where bf16 tiles run (``fast_bf16_matmul``) the two modes sum the tile products in another order, so an
    fp32 result may round to the neighbouring bf16 value: each loss is compared on its own (adding two bf16
    gradients that nearly cancel would magnify that one-ulp step), within bf16 steps of the largest entry.
    """
    gen = torch.Generator().manual_seed(100 + rank)
    q, k = torch.randn(5, DIM, generator=gen).bfloat16(), torch.randn(7, DIM, generator=gen).bfloat16()
    losses = (
        lambda qq, kk, mode: info_nce(qq, kk, scale=5.0, group=group, distributed=mode),
        lambda qq, kk, mode: sigmoid_loss(qq, kk, 3.0, -1.0, group=group, distributed=mode),
    )
    for loss_fn in losses:
        results = []
        for mode in ("gather", "ring"):
            qq, kk = q.clone().requires_grad_(), k.clone().requires_grad_()
            loss = loss_fn(qq, kk, mode)
            loss.backward()
            assert qq.grad.dtype == kk.grad.dtype == torch.bfloat16
            results.append((loss.detach().float(), qq.grad.float(), kk.grad.float()))
        for got, want in zip(results[1], results[0]):
            torch.testing.assert_close(got, want, rtol=1e-2, atol=2**-7 * float(want.abs().max()))


def _check_auto_rule(group, world):
    plan = ring_module.plan_distributed(group, "auto", 4, 6, 8, False, 4, torch.device("cpu"))
    assert plan.mode == "gather" and plan.key_rows == (6,) * world
    previous = ring_module.GATHER_MAX_BYTES
    # Gathered keys + fp32 key gradients of this call: world · 6 · 8 · (4 + 4) bytes.
    ring_module.GATHER_MAX_BYTES = world * 6 * 8 * 8 - 1
    try:
        assert (
            ring_module.plan_distributed(group, "auto", 4, 6, 8, False, 4, torch.device("cpu")).mode == "ring"
        )
    finally:
        ring_module.GATHER_MAX_BYTES = previous


def _check_ddp_ring(group, world, rank):
    """DDP encoder + ring losses (learnable SigmoidLoss too) = single-process parameter gradients."""
    torch.manual_seed(3)
    encoder = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, DIM))
    reference = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, DIM))
    reference.load_state_dict(encoder.state_dict())
    loss_mod, ref_mod = SigmoidLoss(group=group, distributed="ring"), SigmoidLoss()
    gen = torch.Generator().manual_seed(11)
    x_query, x_key = torch.randn(world * 3, 6, generator=gen), torch.randn(world * 3, 6, generator=gen)
    rows = slice(rank * 3, (rank + 1) * 3)
    ddp = torch.nn.parallel.DistributedDataParallel(encoder, process_group=group)
    q, k = ddp(x_query[rows]), ddp(x_key[rows])
    loss = info_nce(q, k, scale=4.0, group=group, distributed="ring") + loss_mod(q, k)
    loss.backward()
    q_ref, k_ref = reference(x_query), reference(x_key)
    (info_nce(q_ref, k_ref, scale=4.0) + ref_mod(q_ref, k_ref)).backward()
    for got, want in zip(encoder.parameters(), reference.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-6)
    for got, want in zip(loss_mod.parameters(), ref_mod.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-6)


def _worker(rank: int, world: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]
        for group, size, local_rank in ((dist.group.WORLD, world, rank), (pairs[rank // 2], 2, rank % 2)):
            _check_modes(group, size, local_rank)
            _check_auto_rule(group, size)
            _check_bf16_ring_equals_gather(group, local_rank)
            _check_ddp_ring(group, size, local_rank)
    finally:
        dist.destroy_process_group()


def test_ring_and_gather_match_single_process_on_2_and_4_ranks(tmp_path):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(4, str(tmp_path / "rendezvous")), nprocs=4, join=True)
