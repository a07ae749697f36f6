"""What machine a figure came from: recorded with every benchmark, demo and experiment result.

Machines of the same size differ ~3× in speed and some CPUs have fast bf16 (AMX) while others do not, so a
timing means little without the machine it was taken on.
"""

from __future__ import annotations

import importlib
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["cpu_flags", "cpu_generation", "cpu_model", "cpu_vendor", "describe_machine"]

#: CPU flags that decide which precision is fast (see docs/losses.md, docs/b3.md).
_PRECISION_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")


#: AMD (family, model range, core) where the generation changes what bf16 costs: Zen 4 runs 512-bit
#: instructions in two halves, Zen 5 (server parts) at full width. Two machines both named "AMD EPYC" here
#: measured bf16 matmuls at 2.3–3.1× fp32 in earlier sessions (family not recorded) and 4.6–4.8× on
#: family 26 (``benchmarks/results/b3_scale_100000_zen5_dec03.md``).
_AMD_CORES = (
    (25, range(0x10, 0x20), "Zen 4"),
    (25, range(0x60, 0x80), "Zen 4"),
    (25, range(0xA0, 0xB0), "Zen 4"),
    (25, range(0x100), "Zen 3"),
    (26, range(0x100), "Zen 5"),
)


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _cpu_fields() -> dict[str, str]:
    """Each ``/proc/cpuinfo`` field's first value (the first processor's, for per-processor fields)."""
    fields: dict[str, str] = {}
    for line in _cpuinfo().splitlines():
        key, colon, value = line.partition(":")
        if colon:
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` reports."""
    return _cpu_fields().get("model name") or platform.processor() or platform.machine()


def cpu_vendor() -> str:
    """The CPU vendor id (``/proc/cpuinfo``'s ``vendor_id``, e.g. ``"AuthenticAMD"``), empty where unknown."""
    return _cpu_fields().get("vendor_id", "")


def cpu_generation() -> str:
    """The CPU's family and model numbers, and the AMD core they mean where known; empty where unknown.

    Virtual machines often name the CPU only "AMD EPYC", which hides a 2× difference in bf16 speed.

    Example:
        >>> isinstance(cpu_generation(), str)
        True
    """
    fields = _cpu_fields()
    family, model = fields.get("cpu family", ""), fields.get("model", "")
    if not family.isdigit():
        return ""
    text = f"family {family}" + (f" model {model}" if model.isdigit() else "")
    if fields.get("vendor_id") == "AuthenticAMD":
        number = int(model) if model.isdigit() else -1
        core = next((name for fam, models, name in _AMD_CORES if fam == int(family) and number in models), "")
        if core:
            text += f", {core}"
    return text


def cpu_flags() -> set[str]:
    """The CPU feature flags (``lscpu``'s Flags), empty where ``/proc/cpuinfo`` is not available."""
    return set(_cpu_fields().get("flags", "").split())


def describe_machine(packages: Iterable[str] = ()) -> dict[str, Any]:
    """A JSON-ready description of this machine and software, for result files.

    Args:
        packages: extra modules whose versions to record (e.g. ``("faiss", "pymetis")``); a missing one is
            recorded as ``None``.

    Returns:
        platform, CPU model (with its family, model number and AMD core where known) and count, the
        precision-relevant CPU flags present, torch version, threads,
        CUDA device name (or None), numpy and Python versions, the 1-minute load average, and the
        requested package versions.
    """
    import numpy as np
    import torch

    flags = cpu_flags()
    generation = cpu_generation()
    info: dict[str, Any] = {
        "platform": platform.platform(),
        # The generation in the name, so that every result header that prints the CPU shows it.
        "cpu": cpu_model() + (f" ({generation})" if generation else ""),
        "cpu_vendor": cpu_vendor(),
        "cpus": os.cpu_count(),
        "cpu_flags": [flag for flag in _PRECISION_FLAGS if flag in flags],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    for name in packages:
        try:
            module = importlib.import_module(name)
        except ImportError:
            info[name] = None
            continue
        info[name] = str(getattr(module, "__version__", getattr(module, "version", "?")))
    return info
