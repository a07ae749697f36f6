"""Which precision the similarity matmul should run in: bf16 where the hardware is fast at it, else fp32.

bf16 scores are only a *pre-selection*: every stage that uses them re-scores its candidates in fp32 and
proves its answer equals the fp32 one (see :mod:`hardbatch.graph.knn` and :mod:`hardbatch.graph.threshold`),
so the choice changes speed, never results. It is made by capability, never by assumption:

The rule is :func:`hardbatch.device.fast_bf16_matmul`, shared with the loss: CUDA devices with bf16
support, CPUs listing ``amx_bf16`` and AMD CPUs listing ``avx512_bf16`` (Zen 4 and later). On a 2-core
EPYC (Zen 4, bf16 matmul 2.3–3.1× fp32) the whole exact ``mine_b3`` at 100k took 57.5 s on the bf16 path
against 82.1 s in fp32 (`b3_scale_100000_zen4_bound.md`), and GCBS's threshold graph 65.6 against 81.6 s;
on an EPYC of family 26 (Zen 5, bf16 matmul 4.2–4.8× fp32) 24.5 against 51.7 s
(`b3_scale_100000_zen5_dec03_widen.md`);
the bf16 kNN pays only because its fp32 re-scoring gathers cache-sized pieces (per 1,024 rows × 262
candidates: 135 ms, against 375 ms in 64 MiB pieces, which made the bf16 path slower than fp32). It reads
CPU flags, never a timing: the two paths agree up to fp32 rounding (re-scoring vs gemm), so a load-dependent
choice could make two runs of one command rank near-ties differently.

``HARDBATCH_MATMUL_PRECISION=fp32|bf16`` overrides the choice (e.g. for benchmarks).
"""

from __future__ import annotations

import functools
import os
from typing import Literal

import torch

from hardbatch.errors import ConfigError

__all__ = ["Precision", "bf16_is_fast", "bf16_score_error_bound", "resolve_precision"]

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


@functools.lru_cache(maxsize=8)
def bf16_is_fast(device_type: str, device_index: int | None = None) -> bool:
    """Whether a bf16 matmul is clearly faster than fp32 on this device (cached per process).

    Example:
        >>> isinstance(bf16_is_fast("cpu"), bool)
        True
    """
    from hardbatch.device import fast_bf16_matmul

    # One capability rule for the loss and for mining (hardbatch.device).
    return fast_bf16_matmul(torch.device(device_type, device_index))


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
