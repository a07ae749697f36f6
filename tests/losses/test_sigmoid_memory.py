"""Peak memory of the sigmoid loss (fwd + bwd) at b = n = 32,768, d = 64 grows by at most 64 MiB.

A materialised b × n fp32 logit matrix would be 4 GiB here. Measured as the process's own RSS high-water
mark (VmHWM) in a fresh subprocess, as in test_memory.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

B = N = 32_768
D = 64
LIMIT = 64 * 2**20

SCRIPT = textwrap.dedent(
    f"""
    import json, torch
    torch.set_num_threads(2)
    from hardbatch.losses import sigmoid_loss

    def peak():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM")

    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn({B}, {D}), dim=-1).requires_grad_()
    k = torch.nn.functional.normalize(torch.randn({N}, {D}), dim=-1).requires_grad_()
    scale = torch.tensor(10.0, requires_grad=True)
    bias = torch.tensor(-10.0, requires_grad=True)
    # Warm-up on a slice: kernels and allocator arenas must not count below.
    sigmoid_loss(q[:2048], k[:2048], scale, bias).backward()
    q.grad = k.grad = scale.grad = bias.grad = None
    base = peak()
    loss = sigmoid_loss(q, k, scale, bias)
    loss.backward()
    grown = peak() - base
    finite = bool(torch.isfinite(loss)) and bool(torch.isfinite(q.grad).all())
    # The probe must see a 64 MiB allocation (touched pages).
    probe = torch.ones({LIMIT} // 4)
    seen = peak() - base
    del probe
    print(json.dumps({{"grown": grown, "probe_seen": seen, "finite": finite}}))
    """
)


@pytest.mark.slow
def test_sigmoid_loss_memory_at_32k_grows_under_64_mib():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=1800, check=True
    )
    peaks = json.loads(result.stdout.strip().splitlines()[-1])
    assert peaks["finite"], peaks
    assert peaks["probe_seen"] >= LIMIT, peaks
    # Gradients of q and k (2 × 8 MiB, the unavoidable part) + two 4 MiB tiles + O(b) vectors.
    assert peaks["grown"] <= LIMIT, peaks
