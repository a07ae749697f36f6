"""Device selection: ``"auto"`` means CUDA when available, else CPU."""

from __future__ import annotations

import torch

from hardbatch.errors import ConfigError

__all__ = ["resolve_device"]


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
