"""The InfoNCE and sigmoid Triton kernels compile for Hopper (sm_90) — checked without a GPU.

The CPU interpreter executes the kernels' Python semantics but not Triton's code generator; these tests
lower representative variants to PTX/cubin with Triton's bundled NVIDIA toolchain, covering the
production bf16 path (tensor-core ``wgmma``) and the other constexpr branches (fp16 rescale, fp32 IEEE
dots, ragged ``d``, key-owned deterministic kernel, no ids / no column direction). ~5–15 s per variant on
a 2-core machine (cached by Triton afterwards).
"""

from __future__ import annotations

import importlib.util

import pytest

pytest.importorskip("triton")
if importlib.util.find_spec("triton.backends.nvidia") is None:  # pragma: no cover - CPU-only Triton builds
    pytest.skip("Triton has no NVIDIA backend to compile with", allow_module_level=True)

from triton_compile_check import compile_variant

from hardbatch.losses import triton_kernels

SMEM_LIMIT_SM90 = 227 * 1024

VARIANTS = {
    "fwd_bf16_d768_ids_col": dict(kind="fwd", d=768, block=(128, 128, 64), num_warps=8, num_stages=3),
    "bwd_bf16_d768_fast": dict(kind="bwd", d=768, block=(128, 64, 64), num_warps=8, num_stages=2),
    "bwd_fp16_d33_keyowned_det": dict(
        kind="bwd",
        d=33,
        dtype="float16",
        block=(64, 64, 64),
        num_warps=4,
        num_stages=2,
        MODE=1,
        WRITE_OTHER=False,
        COMPUTE_DSCALE=False,
    ),
    "bwd_fp32_d7_rowonly_noids": dict(
        kind="bwd",
        d=7,
        dtype="float32",
        precision="ieee",
        block=(64, 64, 16),
        num_warps=4,
        num_stages=2,
        WRITE_OTHER=False,
        HAS_IDS=False,
        HAS_COL=False,
    ),
}
# The sigmoid (SigLIP) kernels of triton_sigmoid: the same tile walk and gradient push with their own
# elementwise part, compiled in the same configurations (no column direction: HAS_COL does not apply).
VARIANTS.update(
    {
        f"sig_{name}": {**{k: v for k, v in spec.items() if k != "HAS_COL"}, "kind": f"sig_{spec['kind']}"}
        for name, spec in list(VARIANTS.items())
    }
)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_kernel_variant_compiles_for_sm90(name: str) -> None:
    if triton_kernels.interpreter_enabled():
        pytest.skip("TRITON_INTERPRET is set: kernels are interpreted functions in this process")
    spec = dict(VARIANTS[name])
    info = compile_variant(spec.pop("kind"), arch=90, **spec)
    assert info["shared_bytes"] <= SMEM_LIMIT_SM90, info
    if spec.get("precision", "tf32") != "ieee":  # exact fp32 dots run on FMA units by design
        assert info["uses_mma"], f"{name}: tl.dot did not lower to tensor-core MMA: {info}"
    if spec.get("dtype", "bfloat16") == "bfloat16":
        assert info["uses_wgmma"], f"{name}: the bf16 path must use Hopper wgmma: {info}"
