"""End-to-end ``info_nce(backend="triton")`` (autograd wiring, reductions, shared positives, masks) on CPU.

The Triton kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` must be set before they are
imported), so everything happens in one subprocess that compares against the materialising reference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent(
    """
    import json, torch
    torch.set_num_threads(1)
    from hardbatch.losses import info_nce, reference_info_nce

    def run(fn, q, k, labels, **kw):
        q = q.clone().requires_grad_(); k = k.clone().requires_grad_()
        s = torch.tensor(17.0, requires_grad=True)
        loss = fn(q, k, labels, scale=s, **kw)
        g = torch.linspace(-1, 2, loss.numel()).reshape(loss.shape).to(loss.dtype)
        dq, dk, ds = torch.autograd.grad(loss, [q, k, s], g)
        return [t.float() for t in (loss, dq, dk, ds)]

    gen = torch.Generator().manual_seed(0)
    errors = {}
    cases = {
        "fp32_sym_mask_dup": (torch.float32, 19, 45, 20, True, True, "none"),
        "fp32_rows_mean": (torch.float32, 17, 33, 7, False, False, "mean"),
        "bf16_sym_sum": (torch.bfloat16, 21, 40, 16, True, False, "sum"),
    }
    for name, (dtype, b, n, d, symmetric, masked, reduction) in cases.items():
        q = torch.nn.functional.normalize(torch.randn(b, d, generator=gen), dim=-1).to(dtype)
        k = torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=-1).to(dtype)
        labels = torch.randint(0, n, (b,), generator=gen)  # repeats: shared positive keys
        kw = dict(symmetric=symmetric, reduction=reduction)
        if masked:
            ids = torch.randint(0, 5, (n,), generator=gen)
            kw.update(query_ids=ids[labels], key_ids=ids)
        got = run(lambda *a, **x: info_nce(*a, backend="triton", **x), q, k, labels, **kw)
        want = run(reference_info_nce, q, k, labels, **kw)
        errors[name] = [float((a - b).abs().max() / (b.abs().max() + 1e-6)) for a, b in zip(got, want)]
    print(json.dumps(errors))
    """
)


@pytest.mark.timeout(300)
def test_info_nce_triton_backend_matches_reference_in_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", HARDBATCH_PROGRESS="0", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=280
    )
    assert done.returncode == 0, done.stderr[-4000:]
    errors = json.loads(done.stdout.strip().splitlines()[-1])
    for name, relative in errors.items():
        limit = 3e-2 if name.startswith("bf16") else 1e-4
        for quantity, value in zip(("loss", "dq", "dk", "dscale"), relative):
            assert value <= limit, f"{name}: {quantity} relative error {value:.3g} > {limit}"
