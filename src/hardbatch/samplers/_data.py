"""Reading what samplers need from the many dataset shapes users hand them.

Samplers accept a :class:`hardbatch.data.PairDataset` (attributes ``queries``, ``positives``,
``negatives``, ``sources``), a Hugging Face ``datasets.Dataset`` (columns), or any sequence of dicts. These
helpers read texts, sources and embedding arrays from all of them, column by column (never row by row
through ``__getitem__`` when a columnar path exists).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hardbatch.errors import ConfigError, DataError
from hardbatch.validation import check_embeddings

__all__ = ["dataset_sources", "dataset_text_columns", "load_embedding_array"]

#: Columns that never hold example text (sentence-transformers excludes ``dataset_name`` too).
_NON_TEXT_COLUMNS = {"dataset_name", "id", "source"}


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def _flatten(values: Sequence[Any]) -> list[list[str]]:
    """One list of texts per row (a list-valued cell such as ``negatives`` contributes all its items)."""
    rows: list[list[str]] = []
    for value in values:
        if value is None:
            rows.append([])
        elif isinstance(value, list | tuple):
            rows.append([_as_text(item) for item in value])
        else:
            rows.append([_as_text(value)])
    return rows


def dataset_text_columns(
    dataset: Any, valid_label_columns: Sequence[str] | None = None
) -> list[list[list[str]]]:
    """The texts of every row, grouped by column: ``columns[c][i]`` is the list of texts of row i in column c.

    Args:
        dataset: a PairDataset, a ``datasets.Dataset``, or a sequence of dicts.
        valid_label_columns: columns to ignore (labels are not texts).

    Raises:
        ConfigError: the dataset exposes no texts.
    """
    skip = set(valid_label_columns or ()) | _NON_TEXT_COLUMNS
    if hasattr(dataset, "queries") and hasattr(dataset, "positives"):
        columns = [_flatten(dataset.queries), _flatten(dataset.positives)]
        negatives = getattr(dataset, "negatives", None)
        if negatives is not None:
            columns.append(_flatten(negatives))
        return columns
    names = getattr(dataset, "column_names", None)
    if names is not None:
        return [_flatten(list(dataset[name])) for name in names if name not in skip]
    if dataset is None or len(dataset) == 0:
        raise ConfigError("the sampler needs a dataset with texts")
    first = dataset[0]
    if not isinstance(first, dict):
        raise ConfigError(
            f"cannot read texts from a dataset of {type(first).__name__} rows; give a PairDataset, a "
            "datasets.Dataset or a sequence of dicts"
        )
    keys = [key for key in first if key not in skip]
    rows = [dataset[i] for i in range(len(dataset))]
    return [_flatten([row.get(key) for row in rows]) for key in keys]


def dataset_sources(dataset: Any, column: str = "source") -> list[str] | None:
    """The source of every row (``dataset.sources`` or the ``column`` column), or ``None`` when absent."""
    sources = getattr(dataset, "sources", None)
    if sources is not None:
        return [str(s) for s in sources]
    names = getattr(dataset, "column_names", None)
    if names is not None:
        return [str(s) for s in dataset[column]] if column in names else None
    if dataset is not None and len(dataset) and isinstance(dataset[0], dict) and column in dataset[0]:
        return [str(dataset[i][column]) for i in range(len(dataset))]
    return None


def load_embedding_array(
    value: np.ndarray | torch.Tensor | str | os.PathLike[str], name: str, rows: int
) -> np.ndarray:
    """An (N, d) float32 matrix from an array, a tensor or a ``.npy`` path (memory-mapped), validated.

    Raises:
        DataError: wrong shape, non-float or non-finite values (names the file or argument and the row).
    """
    label = name
    if isinstance(value, str | os.PathLike):
        path = Path(value)
        if not path.is_file():
            raise DataError(f"{name}: file not found: {path}")
        label = str(path)
        try:
            value = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:  # an empty/truncated file raises EOFError
            raise DataError(f"{path}: not a readable .npy array ({exc or type(exc).__name__})") from exc
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().float().numpy()
    array = np.asarray(value)
    check_embeddings(array, label, rows=rows)
    return array if array.dtype == np.float32 else array.astype(np.float32)
