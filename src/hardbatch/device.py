"""Device selection (``"auto"`` means CUDA when available, else CPU) and precision capabilities.

:func:`fast_bf16_matmul` tells whether bf16 matrix products on a device are worth using instead of
upcasting to fp32. Measured on 2-core machines (torch 2.13 CPU build, 4,096 × 100k × 384):

* CUDA: always (tensor cores).
* CPUs with AMX (``amx_bf16``): yes, bf16 ≈ 4× fp32 (820 vs 217 GFLOP/s).
* AMD CPUs with ``avx512_bf16`` (Zen 4 and later): yes, bf16 ≈ 2.4× fp32 (236–263 vs 102–105 GFLOP/s on
  an EPYC of family 25 model 17); a MiniLM training step under bf16 autocast took 0.51× the fp32 time.
* Intel CPUs with ``avx512_bf16`` but no AMX: no, bf16 ran at 0.74× fp32 on such a Xeon.
* Other CPUs: no, bf16 matmul is several times slower than fp32.

The choice reads the CPU flags and vendor, never a timing, so the same command takes the same path on a
machine whatever its load. The loss and mining code use it to pick between bf16 tiles (fp32 accumulation and
exp / log-sum-exp in fp32) and fp32 tiles; the trainer's ``precision="auto"`` uses it for autocast.
"""

from __future__ import annotations

import functools
import os

import torch

from hardbatch.errors import ConfigError

__all__ = ["BF16_MATMUL_ENV", "cpu_flags", "cpu_vendor", "fast_bf16_matmul", "resolve_device"]

BF16_MATMUL_ENV = "HARDBATCH_BF16_MATMUL"


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None`` → CUDA when available, else CPU; anything else is checked against this machine.

    Raises:
        ConfigError: not a device name, or a CUDA device on a CPU-only torch build / a machine without
            that GPU (instead of torch's AssertionError deep inside the first CUDA call).
        TypeError: ``device`` is neither a string nor a ``torch.device``.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        resolved = device
    elif isinstance(device, str):
        try:
            resolved = torch.device(device)
        except RuntimeError as exc:
            raise ConfigError(f"--device {device!r}: not a device; use auto, cpu, cuda or cuda:N") from exc
    else:
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                f"this torch build ({torch.__version__}) has no CUDA support"
                if torch.version.cuda is None
                else "no CUDA GPU is visible"
            )
            raise ConfigError(f"--device {device}: {why}; use --device cpu (or auto)")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    return resolved


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str] | None:
    """The CPU feature flags (:func:`hardbatch.machine.cpu_flags`), or None where they cannot be read."""
    from hardbatch.machine import cpu_flags as read_flags

    return frozenset(read_flags()) or None


@functools.lru_cache(maxsize=1)
def cpu_vendor() -> str | None:
    """The CPU vendor (``"GenuineIntel"``, ``"AuthenticAMD"``, ...: :func:`hardbatch.machine.cpu_vendor`)."""
    from hardbatch.machine import cpu_vendor as read_vendor

    return read_vendor() or None


def fast_bf16_matmul(device: str | torch.device = "cpu") -> bool:
    """Whether bf16 matmuls on ``device`` are faster than upcasting to fp32 (cached per process).

    ``$HARDBATCH_BF16_MATMUL`` = ``1`` / ``0`` forces the answer (tests, benchmarks, odd hardware).

    Example:
        >>> isinstance(fast_bf16_matmul("cpu"), bool)
        True
    """
    forced = os.environ.get(BF16_MATMUL_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    # By the CPU flags and vendor alone, never by a timing: the bf16 and fp32 paths differ in the last bits (fp32
    # re-scoring vs gemm rounding), so a choice that depended on the machine's load could give two runs
    # of the same command different results.
    flags = cpu_flags() or frozenset()
    if "amx_bf16" in flags:
        return True
    # Zen 4 runs bf16 dot products (vdpbf16ps) at twice its fp32 FMA rate; Intel parts with avx512_bf16 and
    # no AMX measured below fp32 (module docs), so the flag alone does not decide.
    return "avx512_bf16" in flags and cpu_vendor() == "AuthenticAMD"
