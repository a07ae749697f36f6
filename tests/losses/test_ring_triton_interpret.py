"""The Triton kernels accept label −1 ("no positive in this key block", what the ring passes for foreign
blocks) and then agree with the torch tile backend (Triton CPU interpreter, one small subprocess)."""

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
    from hardbatch.losses import tiled, triton_kernels as tk

    torch.manual_seed(0)
    b, n, d = 19, 27, 8
    q, k = torch.randn(b, d), torch.randn(n, d)
    labels = torch.randint(0, n, (b,))
    labels[::3] = -1                      # rows whose positive lives in another rank's block
    foreign = torch.full((b,), -1)        # a whole foreign block
    k_ids = torch.randint(0, 4, (n,))
    q_ids = torch.randint(0, 4, (b,))
    g_row, g_col = torch.rand(b), torch.rand(n)
    scale = torch.tensor(3.0)
    errors = {}
    for name, lab in (("mixed", labels), ("foreign", foreign)):
        for ids in (None, (q_ids, k_ids)):
            qi, ki = (None, None) if ids is None else ids
            want = tiled.fused_lse_forward(q, k, scale, lab, qi, ki, True, 8, 8)
            got = tk.fused_lse_forward(q, k, scale, lab, qi, ki, True, 16, 16)
            has = lab >= 0
            err = [float((got[0] - want[0]).abs().max()), float((got[1] - want[1]).abs().max()),
                   float((got[2][has] - want[2][has]).abs().max()) if bool(has.any()) else 0.0]
            bw = tiled.fused_backward(q, k, scale, lab, qi, ki, want[0], want[1], g_row, g_col, 8, 8)
            bg = tk.fused_backward(q, k, scale, lab, qi, ki, want[0], want[1], g_row, g_col, 16, 16)
            err += [float((x - y).abs().max()) for x, y in zip(bg, bw)]
            errors[f"{name}-{'ids' if ids else 'noids'}"] = max(err)
    print(json.dumps(errors))
    """
)


def test_triton_kernels_take_ring_blocks_without_positives():
    env = dict(os.environ, TRITON_INTERPRET="1", HARDBATCH_PROGRESS="0", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    errors = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(errors) == 4 and max(errors.values()) < 1e-4, errors
