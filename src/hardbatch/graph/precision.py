"""Which precision the similarity matmul should run in: bf16 where the hardware is fast at it, else fp32.

bf16 scores are only a *pre-selection*: every stage that uses them re-scores its candidates in fp32 and
proves its answer equals the fp32 one (see :mod:`hardbatch.graph.knn` and :mod:`hardbatch.graph.threshold`),
so the choice changes speed, never results. It is made by capability, never by assumption:

* CUDA: bf16 (tensor cores) on devices of compute capability >= 8.0, fp32 otherwise.
* CPU: bf16 when ``/proc/cpuinfo`` lists ``amx_bf16`` (AMX tiles: ~4× fp32 measured on 2 cores). Otherwise a
  short probe (~0.1-0.3 s, cached per process) times a 256 × 4096 × 384 matmul in both precisions and picks bf16
  only if it is at least 1.5× faster; CPUs with ``avx512_bf16`` but no AMX were measured at parity, and
  CPUs with neither at several times slower.

``HARDBATCH_MATMUL_PRECISION=fp32|bf16`` overrides the choice (e.g. for benchmarks).
"""

from __future__ import annotations

import functools
import os
import time
from typing import Literal

import torch

from hardbatch.errors import ConfigError

__all__ = ["Precision", "bf16_is_fast", "bf16_score_error_bound", "cpu_flags", "resolve_precision"]

Precision = Literal["auto", "fp32", "bf16"]

#: bf16 must beat fp32 by this factor in the probe to be chosen on a CPU without AMX.
_PROBE_SPEEDUP = 1.5


def bf16_score_error_bound(dim: int) -> float:
    """Relative bound C with |bf16 score - fp32 score| <= C · ||x|| · ||y|| for d-dimensional x, y.

    Inputs rounded to bf16 (each product off by at most (2u + u²)|x_l y_l|, summed: <= (2u + u²)||x|| ||y||
    by Cauchy-Schwarz), fp32 accumulation (<= d · 2^-24 relative) and the bf16 rounding of the output
    (<= u of the value); u = 2^-8, the unit roundoff of bf16. A 1 % factor covers the fp32 re-scoring's own
    rounding.

    Example:
        >>> round(bf16_score_error_bound(384), 4)
        0.0119
    """
    u = 2.0**-8
    return 1.01 * ((2 * u + u * u) * (1 + u) + u + (dim + 2) * 2.0**-24)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where the file does not exist)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _time_matmul(dtype: torch.dtype, repeats: int = 3) -> float:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(256, 384, generator=generator).to(dtype)
    b = torch.randn(4096, 384, generator=generator).to(dtype)
    a @ b.T  # warm-up (library dispatch, page faults)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b.T
        best = min(best, time.perf_counter() - started)
    return best


@functools.lru_cache(maxsize=8)
def bf16_is_fast(device_type: str, device_index: int | None = None) -> bool:
    """Whether a bf16 matmul is clearly faster than fp32 on this device (cached per process).

    Example:
        >>> isinstance(bf16_is_fast("cpu"), bool)
        True
    """
    if device_type == "cuda":
        major, _ = torch.cuda.get_device_capability(device_index)
        return major >= 8
    if device_type != "cpu":
        return False
    if "amx_bf16" in cpu_flags():
        return True
    return _time_matmul(torch.float32) > _PROBE_SPEEDUP * _time_matmul(torch.bfloat16)


def resolve_precision(precision: str, device: torch.device) -> Literal["fp32", "bf16"]:
    """``"fp32"`` or ``"bf16"`` for a requested precision (``"auto"``: by capability, see the module docs).

    Raises:
        ConfigError: an unknown precision name.

    Example:
        >>> resolve_precision("fp32", torch.device("cpu"))
        'fp32'
    """
    if precision == "auto":
        forced = os.environ.get("HARDBATCH_MATMUL_PRECISION", "").strip().lower()
        if forced in ("fp32", "bf16"):
            return forced  # type: ignore[return-value]
        return "bf16" if bf16_is_fast(device.type, device.index) else "fp32"
    if precision in ("fp32", "bf16"):
        return precision  # type: ignore[return-value]
    raise ConfigError(f"unknown precision {precision!r}; expected 'auto', 'fp32' or 'bf16'")
