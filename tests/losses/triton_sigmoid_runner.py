"""Run the Triton sigmoid (SigLIP) kernels in Triton's CPU interpreter; print one JSON object of errors.

``TRITON_INTERPRET=1`` must be set before Triton JIT-decorates the kernels, so the tests run this file in a
subprocess (``python triton_sigmoid_runner.py [--distributed DIR]``). Three groups of checks:

* ``e2e_*``: ``sigmoid_loss(..., backend="triton")`` (autograd, reductions, masks, learnable scale and bias)
  against :func:`reference_sigmoid_loss` in float64: max relative error of the loss and of the gradients
  w.r.t. query, key, scale and bias (max |difference| / max |reference|).
* ``kernel_*``: ``triton_sigmoid.sigmoid_forward`` / ``sigmoid_backward`` against the torch tiles of
  ``sigmoid_tiled`` (the other implementation of the contract), with ring-style labels −1, key splits,
  one- and multi-chunk d, both backward modes, and the autotuned (CUDA) host path driven on CPU.
* ``--distributed DIR``: 2 gloo ranks run ``sigmoid_loss(backend="triton")`` in ``gather`` and ``ring``
  mode and compare with the single-process reference (the checks of ``test_ring.py``); prints ``{"ok": 1}``.

Sizes are tiny and awkward (b=37, n=53, d=24 and the like) and blocks 16 or 32 wide, so a run takes
~10–30 s on a loaded 2-core machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).parent


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.detach().double(), b.detach().double()
    return float((a64 - b64).abs().max() / b64.abs().max().clamp_min(1e-12))


def _inputs(b: int, n: int, d: int, seed: int, *, dtype=torch.float32, normalize=False, near=0.0):
    """Queries, keys (the first b are the queries' positives: copies plus noise when ``near`` > 0)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, d, generator=gen)
    k = torch.randn(n, d, generator=gen)
    if near:
        k[:b] = q + near * torch.randn(b, d, generator=gen)
    if normalize:
        q, k = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(k, dim=1)
    return q.to(dtype), k.to(dtype), gen


# name: (dtype, b, n, d, ids, labels, reduction, scale, bias, tile, normalize, near, deterministic)
E2E_CASES = {
    "e2e_fp32_ids_shared_mean": (torch.float32, 37, 53, 24, True, "random", "mean", 2.3, -1.5, 16, False, 0, False),
    "e2e_fp32_siglip_init_none": (torch.float32, 37, 53, 24, False, None, "none", 10.0, -10.0, (16, 32), True, 0.3, False),
    "e2e_bf16_ids_sum": (torch.bfloat16, 37, 53, 24, True, "random", "sum", 3.0, -2.0, 16, True, 0.4, False),
    "e2e_fp16_deterministic_mean": (torch.float16, 37, 53, 24, True, None, "mean", 5.0, -4.0, 16, True, 0.4, True),
    "e2e_fp32_extreme_logits": (torch.float32, 21, 40, 20, False, None, "mean", 100.0, -10.0, 32, True, 0.05, False),
    "e2e_fp32_deterministic_d40": (torch.float32, 33, 47, 40, True, "random", "sum", 1.7, 0.5, 32, False, 0, True),
}  # fmt: skip


def run_e2e(name: str, device: str = "cpu") -> dict[str, float]:
    """Errors of ``E2E_CASES[name]`` on ``device`` (``"cpu"``: interpreter; ``"cuda"``: compiled kernels)."""
    from hardbatch.losses import reference_sigmoid_loss, sigmoid_loss

    dtype, b, n, d, ids, labels_kind, reduction, scale, bias, tile, normalize, near, det = E2E_CASES[name]
    q, k, gen = _inputs(b, n, d, seed=len(name), dtype=dtype, normalize=normalize, near=near)
    q, k = q.to(device), k.to(device)
    labels = torch.randint(0, n, (b,), generator=gen).to(device) if labels_kind == "random" else None
    kw: dict = {"labels": labels, "reduction": reduction}
    if ids:
        key_ids = torch.randint(0, 5, (n,), generator=gen).to(device)
        # Query i shares its positive's id (so the positive must survive the mask) and collides elsewhere.
        query_ids = key_ids[labels if labels is not None else torch.arange(b, device=device)]
        kw.update(query_ids=query_ids, key_ids=key_ids)

    def run(fn, cast, **extra):
        qq, kk = q.to(cast).requires_grad_(), k.to(cast).requires_grad_()
        dtype = cast if cast == torch.float64 else torch.float32
        s = torch.tensor(scale, dtype=dtype, device=device, requires_grad=True)
        bb = torch.tensor(bias, dtype=dtype, device=device, requires_grad=True)
        loss = fn(qq, kk, s, bb, **kw, **extra)
        weights = torch.linspace(-1.0, 2.0, loss.numel(), device=device).reshape(loss.shape).to(loss.dtype)
        grads = torch.autograd.grad(loss, [qq, kk, s, bb], weights)
        return [loss, *grads]

    started = time.perf_counter()
    with _deterministic(det):
        got = run(sigmoid_loss, dtype, backend="triton", tile_size=tile)
        again = run(sigmoid_loss, dtype, backend="triton", tile_size=tile) if det else got
    seconds = time.perf_counter() - started
    want = run(reference_sigmoid_loss, torch.float64)
    out = {q: _rel(a, w) for q, a, w in zip(("loss", "dq", "dk", "dscale", "dbias"), got, want)}
    out["finite"] = float(all(bool(torch.isfinite(t).all()) for t in got))
    out["dtypes_ok"] = float(got[1].dtype == got[2].dtype == dtype and got[0].dtype == dtype)
    out["bitwise_repeat"] = float(all(torch.equal(a, b) for a, b in zip(got, again)))
    out["seconds"] = seconds
    return out


@contextlib.contextmanager
def _deterministic(on: bool):
    """``torch.use_deterministic_algorithms(on)`` for the block (the Triton backward follows it)."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(on)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


# name: (b, n, d, ids, tile, fwd_splits, bwd_splits, deterministic)
KERNEL_CASES = {
    "kernel_ring_labels_ids_d24": (37, 53, 24, True, 16, None, None, False),
    "kernel_splits_single_chunk_d7": (37, 53, 7, False, 16, 3, 2, False),
    "kernel_deterministic_ids_d24": (37, 53, 24, True, 16, 2, None, True),
    "kernel_foreign_block": (19, 27, 9, True, 16, None, None, False),
}


def run_kernel(name: str, ts, *, autotuned: bool = False, device: str = "cpu") -> dict[str, float]:
    """Errors of ``KERNEL_CASES[name]``: Triton tiles (interpreter on CPU) vs torch tiles on ``device``."""
    from hardbatch.losses import sigmoid_tiled

    b, n, d, ids, tile, fwd_splits, bwd_splits, det = KERNEL_CASES[name]
    q, k, gen = _inputs(b, n, d, seed=len(name) + 7)
    labels = torch.randint(0, n, (b,), generator=gen)
    labels[::3] = -1  # rows whose positive is in another rank's key block
    if name == "kernel_foreign_block":
        labels[:] = -1
    q_ids = torch.randint(0, 4, (b,), generator=gen) if ids else None
    k_ids = torch.randint(0, 4, (n,), generator=gen) if ids else None
    scale, bias, g_row = torch.tensor(2.5), torch.tensor(-3.0), torch.rand(b, generator=gen) - 0.3
    args = tuple(None if t is None else t.to(device) for t in (q, k, scale, bias, labels, q_ids, k_ids))
    g_row = g_row.to(device)
    hint = 0 if autotuned else tile
    got_f = ts.sigmoid_forward(*args, hint, hint, num_key_splits=fwd_splits)
    got_b = ts.sigmoid_backward(*args, g_row, hint, hint, deterministic=det, num_key_splits=bwd_splits)
    want_f = sigmoid_tiled.sigmoid_forward(*args, 8, 8)
    want_b = sigmoid_tiled.sigmoid_backward(*args, g_row, 8, 8)
    out = {"row": _rel(got_f, want_f)}
    out.update({q: _rel(a, w) for q, a, w in zip(("dq", "dk", "dscale", "dbias"), got_b, want_b)})
    out["shapes_ok"] = float(
        got_f.shape == (b,) and got_b[0].shape == q.shape and got_b[1].shape == k.shape
        and got_b[2].dim() == got_b[3].dim() == 0
        and all(t.dtype == torch.float32 for t in (got_f, *got_b))
    )  # fmt: skip
    return out


@contextlib.contextmanager
def cuda_host_path(ts):
    """Make the sigmoid kernels take their CUDA branch (autotuner, META grids, reset_to_zero) on CPU.

    Reuses ``triton_interpret_runner.cuda_host_path`` for the shared InfoNCE helpers (device and config
    lists) and gives this module's autotuners the same wall-clock benchmark.
    """
    from triton_interpret_runner import cuda_host_path as infonce_host_path

    from hardbatch.losses import triton_kernels

    def with_cpu_bench(build):
        def wrapper(*args):
            tuner, kept = build(*args)
            tuner._do_bench = lambda call, quantiles: [_timed(call)] * len(quantiles)
            return tuner, kept

        return wrapper

    saved = {name: getattr(ts, name) for name in ("_autotuned_forward", "_autotuned_backward")}
    with infonce_host_path(triton_kernels):
        ts._autotuned_forward = with_cpu_bench(saved["_autotuned_forward"].__wrapped__)
        ts._autotuned_backward = with_cpu_bench(saved["_autotuned_backward"].__wrapped__)
        try:
            yield
        finally:
            for name, value in saved.items():
                setattr(ts, name, value)


def _timed(call) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def _distributed_worker(rank: int, world: int, init_file: str) -> None:
    import torch.distributed as dist

    sys.path.insert(0, str(HERE))
    from test_ring import _check

    from hardbatch.losses import reference_sigmoid_loss, sigmoid_loss

    def triton_sigmoid_loss(*args, **kwargs):
        return sigmoid_loss(*args, backend="triton", **kwargs)

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        # (seed, equal shards, mode, reduction): gather needs equal shards; the ring takes unequal ones.
        for seed, equal, mode, reduction in ((31, True, "gather", "mean"), (32, False, "ring", "sum")):
            group = dist.group.WORLD
            _check(
                triton_sigmoid_loss, reference_sigmoid_loss, group, world, rank, seed, equal, mode, reduction
            )
    finally:
        dist.destroy_process_group()


def main(argv: list[str]) -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    warnings.filterwarnings("ignore")  # numpy overflow / 0/0 warnings in the discarded where() branches
    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    if argv[:1] == ["--distributed"]:
        import torch.multiprocessing as mp

        mp.spawn(_distributed_worker, args=(2, str(Path(argv[1]) / "rendezvous")), nprocs=2, join=True)
        print(json.dumps({"ok": 1}))
        return
    from hardbatch.losses import triton_sigmoid

    results: dict[str, dict[str, float]] = {name: run_e2e(name) for name in E2E_CASES}
    results.update({name: run_kernel(name, triton_sigmoid) for name in KERNEL_CASES})
    with cuda_host_path(triton_sigmoid):
        for name in ("kernel_ring_labels_ids_d24", "kernel_deterministic_ids_d24"):
            results[f"autotuned_{name}"] = run_kernel(name, triton_sigmoid, autotuned=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
