"""Compile the InfoNCE Triton kernels ahead of time for an NVIDIA target, without a GPU.

Triton's NVIDIA backend (with its bundled ``ptxas``) lowers a kernel to PTX and cubin on any machine, which
catches what the CPU interpreter cannot: type/shape errors of the real code generator, tl.dot constraints,
shared-memory needs and register spills. ``compile_variant`` is used by ``test_triton_compile.py``; run this
file directly to sweep every autotune config (slow: ~10–30 s per compile on a 2-core box)::

    python tests/losses/triton_compile_check.py [--arch 90] [--d 768] [--all-configs] [--loss sigmoid]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

_POINTERS_FWD = ("Q", "K", "SCALE", "LABELS", "Q_IDS", "K_IDS", "ROW_PART", "COL_PART", "POS")
_POINTERS_BWD = (
    "Q", "K", "SCALE", "LABELS", "Q_IDS", "K_IDS", "ROW_LSE", "COL_LSE", "G_ROW", "G_COL", "DQ", "DK", "DSCALE_PART",
)  # fmt: skip
_POINTERS_SIG_FWD = ("Q", "K", "SCALE", "BIAS", "LABELS", "Q_IDS", "K_IDS", "ROW_PART")
_POINTERS_SIG_BWD = (
    "Q", "K", "SCALE", "BIAS", "LABELS", "Q_IDS", "K_IDS", "G_ROW", "DQ", "DK", "DSCALE_PART", "DBIAS_PART",
)  # fmt: skip
_TYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _signature(fn, pointers: tuple[str, ...], dtype: str, constexprs: dict) -> dict[str, str]:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ("Q", "K"):
            sig[name] = "*" + _TYPES[dtype]
        elif name in ("LABELS", "Q_IDS", "K_IDS"):
            sig[name] = "*i32"
        elif name in pointers:
            sig[name] = "*fp32"
        else:
            sig[name] = "i32"
    return sig


def _resource_usage(cubin: bytes) -> dict[str, int]:
    """Registers / spill bytes / shared memory from ``cuobjdump --dump-resource-usage`` (empty if unavailable)."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        text = subprocess.run(
            [str(tool), "--dump-resource-usage", handle.name], capture_output=True, text=True, check=False
        ).stdout
    usage = {}
    for key, pattern in (("registers", r"REG:(\d+)"), ("shared", r"SHARED:(\d+)"), ("stack", r"STACK:(\d+)")):
        match = re.search(pattern, text)
        if match:
            usage[key] = int(match.group(1))
    return usage


def compile_variant(
    kind: str,
    *,
    d: int,
    dtype: str = "bfloat16",
    block: tuple[int, int, int] = (128, 128, 64),
    num_warps: int = 8,
    num_stages: int = 2,
    arch: int = 90,
    precision: str = "tf32",
    **flags,
) -> dict:
    """Compile one kernel variant to cubin; returns timing, shared memory, registers and whether wgmma is used.

    ``kind`` is ``"fwd"`` / ``"bwd"`` (InfoNCE, ``triton_kernels``) or ``"sig_fwd"`` / ``"sig_bwd"`` (sigmoid,
    ``triton_sigmoid``); ``flags`` override the constexpr flags (HAS_IDS, MODE, ...).
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from hardbatch.losses import triton_kernels as tk
    from hardbatch.losses import triton_sigmoid as ts

    block_m, block_n, block_d = block
    common = {"D": d, "PRECISION": precision, "DOT_FP32": False, "BLOCK_M": block_m, "BLOCK_N": block_n,
              "BLOCK_D": block_d, "HAS_IDS": flags.pop("HAS_IDS", True)}  # fmt: skip
    if kind == "fwd":
        fn, pointers = tk._fwd_kernel, _POINTERS_FWD
        constexprs = {**common, "COMPUTE_COL": flags.pop("COMPUTE_COL", True)}
    elif kind == "sig_fwd":
        fn, pointers, constexprs = ts._fwd_kernel, _POINTERS_SIG_FWD, dict(common)
    elif kind == "sig_bwd":
        fn, pointers = ts._bwd_kernel, _POINTERS_SIG_BWD
        constexprs = {
            **common,
            "MODE": flags.pop("MODE", 0),
            "WRITE_OTHER": flags.pop("WRITE_OTHER", True),
            "COMPUTE_DSCALE": flags.pop("COMPUTE_DSCALE", True),
            "IS_FP16": dtype == "float16",
        }
    else:
        fn, pointers = tk._bwd_kernel, _POINTERS_BWD
        constexprs = {
            **common,
            "HAS_COL": flags.pop("HAS_COL", True),
            "MODE": flags.pop("MODE", 0),
            "WRITE_OTHER": flags.pop("WRITE_OTHER", True),
            "COMPUTE_DSCALE": flags.pop("COMPUTE_DSCALE", True),
            "IS_FP16": dtype == "float16",
        }
    if flags:
        raise TypeError(f"unknown flags {sorted(flags)}")
    # Mirror the JIT's launch-time specialisation for contiguous inputs: unit feature strides become
    # constants and 16-divisible pointers / row strides get the divisibility hint (vectorised loads).
    constexprs.update(stride_qd=1, stride_kd=1)
    signature = _signature(fn, pointers, dtype, constexprs)
    divisible = [name for name in fn.arg_names if signature[name].startswith("*")]
    if d % 16 == 0:
        divisible += ["stride_qb", "stride_kn"]
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in divisible}
    started = time.perf_counter()
    source = ASTSource(fn, signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(
        source,
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": True},
    )
    ptx = compiled.asm["ptx"]
    return {
        "kind": kind,
        "d": d,
        "dtype": dtype,
        "block": list(block),
        "num_warps": num_warps,
        "num_stages": num_stages,
        "flags": {
            k: v
            for k, v in constexprs.items()
            if k not in ("PRECISION", "DOT_FP32", "stride_qd", "stride_kd")
        },
        "seconds": round(time.perf_counter() - started, 1),
        "shared_bytes": compiled.metadata.shared,
        "uses_wgmma": "wgmma" in ptx,
        "uses_mma": "mma.sync" in ptx or "wgmma" in ptx,
        "approx_log": "lg2.approx" in ptx,
        **_resource_usage(compiled.asm["cubin"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--all-configs", action="store_true", help="every autotune config (slow)")
    parser.add_argument("--loss", choices=("info_nce", "sigmoid"), default="info_nce", help="which kernels")
    args = parser.parse_args()
    from hardbatch.losses import triton_kernels as tk

    def shapes(configs):
        for c in tk._filter_configs(configs, args.d, 1 << 30, 1 << 30):
            kw = c.kwargs
            yield (kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_D"]), c.num_warps, c.num_stages

    fwd = list(shapes(tk._hopper_forward_configs()))
    bwd = list(shapes(tk._hopper_backward_configs()))
    if not args.all_configs:
        fwd, bwd = fwd[:1], bwd[:1]
    prefix = "" if args.loss == "info_nce" else "sig_"  # the sigmoid kernels share the config lists
    variants = [(prefix + "fwd", s, {}) for s in fwd]
    variants += [(prefix + "bwd", s, {}) for s in bwd]  # fast mode: row-owned, atomic dk
    det_dk = {"WRITE_OTHER": False, "MODE": 1, "COMPUTE_DSCALE": False}
    variants += [(prefix + "bwd", bwd[0], det_dk)]  # deterministic mode's key-owned dk kernel
    for kind, (block, warps, stages), flags in variants:
        try:
            info = compile_variant(
                kind, d=args.d, dtype=args.dtype, block=block, num_warps=warps, num_stages=stages,
                arch=args.arch, **flags,
            )  # fmt: skip
        except Exception as exc:  # report and continue the sweep
            info = {"kind": kind, "block": list(block), "error": f"{type(exc).__name__}: {exc}"[:400]}
        print(json.dumps(info), flush=True)


if __name__ == "__main__":
    main()
