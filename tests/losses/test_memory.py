"""Peak memory of forward + backward stays far below one b × n fp32 matrix (measured as RSS in a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

B = N = 4096
D = 64
MATRIX_BYTES = B * N * 4  # 64 MiB: what a single materialised logit matrix costs

SCRIPT = textwrap.dedent(
    f"""
    import json, resource, torch
    torch.set_num_threads(1)
    from hardbatch.losses import info_nce, reference_info_nce

    def peak():
        # VmHWM is this process's own peak; ru_maxrss would start at the (large) pytest parent's RSS,
        # because Linux carries maxrss over fork + exec.
        try:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    torch.manual_seed(0)
    q = torch.randn({B}, {D}, requires_grad=True)
    k = torch.randn({N}, {D}, requires_grad=True)
    ids = torch.randint(0, 50, ({N},))
    # Warm-up on a small slice: loads kernels and allocator arenas so they do not count below.
    info_nce(q[:64], k[:64], tile_size=512).backward()
    q.grad = k.grad = None
    base = peak()
    info_nce(q, k, query_ids=ids[:{B}], key_ids=ids, tile_size=512).backward()
    tiled = peak() - base
    q.grad = k.grad = None
    reference_info_nce(q, k).backward()
    reference = peak() - base
    print(json.dumps({{"tiled": tiled, "reference": reference}}))
    """
)


def test_peak_memory_is_far_below_a_logit_matrix():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, check=True
    )
    peaks = json.loads(result.stdout.strip().splitlines()[-1])
    # The probe must be able to see a b × n allocation: the materialising reference shows several.
    assert peaks["reference"] > MATRIX_BYTES, peaks
    # Tiled: inputs' gradients (2 MiB) + three 1 MiB tiles + small vectors; allow 4x slack for the allocator.
    assert peaks["tiled"] < MATRIX_BYTES / 4, peaks
