"""Argument checks and normalisation shared by the InfoNCE and sigmoid losses (tiled and reference), and
the ``reduction`` argument's forward (:func:`reduce_rows`) and backward (:func:`per_row_weights`).

Every check is O(b + n) (labels / id vectors) or O(1); embeddings are never scanned, so a NaN embedding
gives a NaN loss, as with any PyTorch loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hardbatch.errors import ConfigError

__all__ = [
    "REDUCTIONS",
    "LossInputs",
    "as_scalar",
    "check_loss_inputs",
    "parse_tile_size",
    "per_row_weights",
    "reduce_rows",
]

REDUCTIONS = ("mean", "sum", "none")


@dataclass(frozen=True)
class LossInputs:
    """Validated loss arguments: labels (b,) int64 and optional id vectors on the query's device."""

    labels: torch.Tensor
    query_ids: torch.Tensor | None
    key_ids: torch.Tensor | None
    scale: torch.Tensor
    duplicate_labels: bool


def _as_index_vector(values: torch.Tensor, name: str, length: int, device: torch.device) -> torch.Tensor:
    if not isinstance(values, torch.Tensor):
        values = torch.as_tensor(values)
    if values.dtype.is_floating_point or values.dtype.is_complex or values.dtype == torch.bool:
        raise ConfigError(f"{name}: expected an integer tensor, got dtype {values.dtype}")
    if tuple(values.shape) != (length,):
        raise ConfigError(f"{name}: expected shape ({length},), got {tuple(values.shape)}")
    return values.to(device=device, dtype=torch.int64)


def as_scalar(value: float | torch.Tensor, name: str, device: torch.device) -> torch.Tensor:
    """A loss scalar (``scale``, ``bias``) as a tensor on ``device``: a one-element tensor (integer dtypes
    cast to fp32, grad kept) or a finite number (fp32); :class:`ConfigError` naming ``name`` otherwise."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ConfigError(
                f"{name}: expected a float or a one-element tensor, got shape {tuple(value.shape)}"
            )
        if not value.dtype.is_floating_point:
            value = value.to(torch.float32)
        return value.to(device)
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: expected a number or a tensor, got {type(value).__name__}") from exc
    if number != number or number in (float("inf"), float("-inf")):
        raise ConfigError(f"{name}: must be finite, got {number}")
    return torch.tensor(number, dtype=torch.float32, device=device)


def check_loss_inputs(
    query: torch.Tensor,
    key: torch.Tensor,
    labels: torch.Tensor | None,
    scale: float | torch.Tensor,
    query_ids: torch.Tensor | None,
    key_ids: torch.Tensor | None,
    reduction: str,
) -> LossInputs:
    """Validate shapes, dtypes, devices, label range and ids; raise :class:`ConfigError` naming the field."""
    for name, tensor in (("query", query), ("key", key)):
        if not isinstance(tensor, torch.Tensor):
            raise ConfigError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
        if tensor.ndim != 2:
            raise ConfigError(f"{name}: expected a 2-D tensor (rows, dim), got shape {tuple(tensor.shape)}")
        if not tensor.dtype.is_floating_point:
            raise ConfigError(f"{name}: expected a floating-point tensor, got dtype {tensor.dtype}")
        if tensor.shape[0] == 0:
            raise ConfigError(f"{name}: no rows")
    if query.shape[1] != key.shape[1]:
        raise ConfigError(f"query has dim {query.shape[1]} but key has dim {key.shape[1]}")
    if query.device != key.device:
        raise ConfigError(f"query is on {query.device} but key is on {key.device}")
    if reduction not in REDUCTIONS:
        raise ConfigError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
    b, n = query.shape[0], key.shape[0]
    device = query.device
    if labels is None:
        if n < b:
            raise ConfigError(
                f"labels default to arange(b), which needs at least b={b} keys, got n={n}; pass labels explicitly"
            )
        labels = torch.arange(b, device=device)
        duplicate = False
    else:
        labels = _as_index_vector(labels, "labels", b, device)
        low, high = (int(v) for v in torch.aminmax(labels))
        if low < 0 or high >= n:
            bad = int(((labels < 0) | (labels >= n)).nonzero()[0, 0])
            raise ConfigError(
                f"labels[{bad}] = {int(labels[bad])} is outside the {n} keys (valid: 0..{n - 1})"
            )
        duplicate = bool(torch.bincount(labels, minlength=n).max() > 1)
    if (query_ids is None) != (key_ids is None):
        raise ConfigError("query_ids and key_ids must be given together (false-negative mask), or neither")
    if query_ids is not None:
        query_ids = _as_index_vector(query_ids, "query_ids", b, device)
        key_ids = _as_index_vector(key_ids, "key_ids", n, device)
    return LossInputs(labels, query_ids, key_ids, as_scalar(scale, "scale", device), duplicate)


def parse_tile_size(
    tile_size: int | tuple[int, int] | None, default: tuple[int | None, int | None]
) -> tuple[int | None, int | None]:
    """``None`` → backend default; ``int`` → square tiles; ``(tile_b, tile_n)`` as given. Must be >= 1."""
    if tile_size is None:
        return default
    if isinstance(tile_size, int):
        tile = (tile_size, tile_size)
    else:
        try:
            tile = (int(tile_size[0]), int(tile_size[1]))
        except (TypeError, IndexError, ValueError) as exc:
            raise ConfigError(f"tile_size: expected an int or (tile_b, tile_n), got {tile_size!r}") from exc
    if min(tile) < 1:
        raise ConfigError(f"tile_size: must be positive, got {tile_size!r}")
    return tile


def reduce_rows(per_row: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-query losses (b,) reduced by ``reduction`` (``mean`` | ``sum`` | ``none``)."""
    if reduction == "mean":
        return per_row.mean()
    if reduction == "sum":
        return per_row.sum()
    return per_row


def per_row_weights(grad: torch.Tensor, reduction: str, rows: int) -> torch.Tensor:
    """Upstream gradient of each query's loss, (b,) fp32, from the gradient of :func:`reduce_rows`'s output."""
    grad = grad.to(torch.float32)
    if reduction == "mean":
        return (grad / rows).expand(rows)
    if reduction == "sum":
        return grad.expand(rows)
    return grad.reshape(rows)
