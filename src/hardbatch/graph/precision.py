"""Which precision the similarity matmul should run in: bf16 where the hardware is fast at it, else fp32.

bf16 scores are only a *pre-selection*: every stage that uses them re-scores its candidates in fp32 and
proves its answer equals the fp32 one (see :mod:`hardbatch.graph.knn` and :mod:`hardbatch.graph.threshold`),
so the choice changes speed, never results. It is made by capability, never by assumption:

The rule starts from :func:`hardbatch.device.fast_bf16_matmul`, shared with the loss, and is stricter on
CPUs: mining's bf16 path pays for its speed with an fp32 re-scoring of ``k + margin`` gathered candidate
keys per row, which only a large matmul speed-up covers. CUDA devices with bf16 support and CPUs listing
``amx_bf16`` (~4× fp32) take it; AMD CPUs with ``avx512_bf16`` do not, although the loss uses bf16 there: on
a 2-core EPYC (Zen 4, bf16 matmul 2.3–2.5× fp32) one 4,096-row block against 100k keys took 3.4–3.6 s on
the bf16 path against 2.8–3.0 s in fp32 (per 1,024 rows: bf16 matmul 274 ms + selection 96 ms + the
re-scoring gather 421 ms, against fp32 matmul 749 ms + selection 77 ms). GCBS's threshold graph re-scores
only the entries near its threshold and keeps the loss's rule: at 100k on that EPYC it took 65.6 s in bf16
against 81.6 s in fp32 (`b3_scale_100000_zen4.md`). It reads CPU flags, never a
timing: the two paths agree up to fp32 rounding (re-scoring vs gemm), so a load-dependent choice could make
two runs of one command rank near-ties differently.

``HARDBATCH_MATMUL_PRECISION=fp32|bf16`` overrides the choice (e.g. for benchmarks).
"""

from __future__ import annotations

import functools
import os
from typing import Literal

import torch

from hardbatch.errors import ConfigError

__all__ = ["Precision", "Use", "bf16_is_fast", "bf16_score_error_bound", "resolve_precision"]

Precision = Literal["auto", "fp32", "bf16"]


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


Use = Literal["topk", "threshold"]


@functools.lru_cache(maxsize=16)
def bf16_is_fast(device_type: str, device_index: int | None = None, use: Use = "topk") -> bool:
    """Whether the bf16 path of ``use`` is faster than fp32 on this device (cached per process).

    ``"topk"`` (the exact kNN: ``k + margin`` candidates per row re-scored) is stricter than
    ``"threshold"`` (the threshold graph: only entries near the threshold are re-scored), which follows the
    loss's rule; see the module docs.

    Example:
        >>> isinstance(bf16_is_fast("cpu"), bool)
        True
    """
    from hardbatch.device import BF16_MATMUL_ENV, cpu_flags, fast_bf16_matmul

    device = torch.device(device_type, device_index)
    forced = os.environ.get(BF16_MATMUL_ENV, "").strip() in ("0", "1")
    if use == "threshold" or device.type != "cpu" or forced:
        return fast_bf16_matmul(device)
    # The loss's rule, narrowed to AMX on CPUs (module docs: the re-scoring gather outweighs Zen 4's 2.4×).
    return fast_bf16_matmul(device) and "amx_bf16" in (cpu_flags() or frozenset())


def resolve_precision(precision: str, device: torch.device, use: Use = "topk") -> Literal["fp32", "bf16"]:
    """``"fp32"`` or ``"bf16"`` for a requested precision (``"auto"``: by capability, see the module docs).

    ``use`` is the stage asking: ``"topk"`` (exact kNN) or ``"threshold"`` (GCBS's threshold graph).

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
        return "bf16" if bf16_is_fast(device.type, device.index, use) else "fp32"
    if precision in ("fp32", "bf16"):
        return precision  # type: ignore[return-value]
    raise ConfigError(f"unknown precision {precision!r}; expected 'auto', 'fp32' or 'bf16'")
