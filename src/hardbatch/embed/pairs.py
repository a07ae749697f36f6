"""Embed the query and positive columns of a pair dataset into a directory of cached ``.npy`` files.

Output: ``<out_dir>/query.npy`` and ``<out_dir>/positive.npy`` (float32, row i = pair i) with their
``.meta.json`` sidecars (see :mod:`hardbatch.embed.cache`). Both columns share one loaded model.
Time and memory as :func:`hardbatch.embed.encode.encode_texts`, per column.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hardbatch.embed.encode import encode_with_loader, resolve_encoder
from hardbatch.embed.fingerprint import model_fingerprint

__all__ = ["COLUMNS", "PairEmbeddings", "embed_pair_columns", "embed_pairs"]

COLUMNS = ("query", "positive")


@dataclass
class PairEmbeddings:
    """Query and positive embeddings of a pair dataset, row-aligned with it.

    Attributes:
        query: (N, d) float32 array (read-only memory map).
        positive: (N, d) float32 array (read-only memory map).
        query_path: file of ``query``.
        positive_path: file of ``positive``.
    """

    query: np.ndarray
    positive: np.ndarray
    query_path: Path
    positive_path: Path

    @property
    def dim(self) -> int:
        return int(self.query.shape[1])

    def __len__(self) -> int:
        return len(self.query)


def embed_pairs(
    dataset: Any,
    model: Any,
    out_dir: str | os.PathLike[str],
    *,
    batch_size: int = 64,
    max_seq_length: int | None = None,
    normalize: bool = True,
    device: str | None = "auto",
    show_progress: bool | None = None,
    on_stale: Literal["rebuild", "error"] = "rebuild",
    query_prompt: str | None = None,
    document_prompt: str | None = None,
) -> PairEmbeddings:
    """Encode ``dataset.queries`` and ``dataset.positives`` into ``out_dir`` (reusing valid caches).

    Args:
        dataset: anything with ``queries`` and ``positives`` lists of N strings (e.g.
            :class:`hardbatch.data.PairDataset`).
        model: ``SentenceTransformer`` instance, model directory or ``"default"``; loaded once and only when
            a column has no valid cache.
        out_dir: output directory (created).
        batch_size, max_seq_length, normalize, device, show_progress, on_stale: as for
            :func:`~hardbatch.embed.encode.encode_texts`.
        query_prompt: prompt prepended to the queries (default: the model's ``prompts["query"]``, see
            :mod:`hardbatch.embed.prompts`; ``""``: none). Part of the cache key (through the texts).
        document_prompt: prompt prepended to the positives (default: the model's ``"document"`` prompt).

    Returns:
        :class:`PairEmbeddings` with both (N, d) float32 arrays and their paths.

    Example:
        >>> import tempfile
        >>> from types import SimpleNamespace
        >>> from hardbatch.embed.models import make_tiny_model
        >>> pairs = SimpleNamespace(queries=["add numbers", "read file"], positives=["def add()", "def read()"])
        >>> emb = embed_pairs(pairs, make_tiny_model(), tempfile.mkdtemp(), show_progress=False)
        >>> emb.query.shape, emb.positive_path.name
        ((2, 32), 'positive.npy')
    """
    return embed_pair_columns(
        dataset, model, out_dir, encode=encode_with_loader, batch_size=batch_size,
        max_seq_length=max_seq_length, normalize=normalize, device=device, show_progress=show_progress,
        on_stale=on_stale, query_prompt=query_prompt, document_prompt=document_prompt,
    )  # fmt: skip


def embed_pair_columns(
    dataset: Any,
    model: Any,
    out_dir: str | os.PathLike[str],
    *,
    encode: Callable[..., np.ndarray],
    batch_size: int,
    max_seq_length: int | None,
    normalize: bool,
    device: str | None,
    show_progress: bool | None,
    on_stale: Literal["rebuild", "error"],
    query_prompt: str | None,
    document_prompt: str | None,
) -> PairEmbeddings:
    """:func:`embed_pairs` with each column encoded by ``encode`` (the signature of
    :func:`~hardbatch.embed.encode.encode_with_loader`; :mod:`hardbatch.embed.sharded` passes its
    distributed encoder), so both paths share prompts, cache names and the lazily loaded model."""
    out = Path(out_dir)
    # Fingerprint once (hashing an in-memory model's weights is not free); load a path model at most once,
    # and only if some column has no valid cache. It also checks a model path, before the folder exists:
    # a refused model must not leave an empty cache folder behind.
    info = model_fingerprint(model)
    loaded: list[tuple[Any, str | None]] = []

    def get_encoder() -> tuple[Any, str | None]:
        if not loaded:
            loaded.append(resolve_encoder(model, device))
        return loaded[0]

    from hardbatch.embed.prompts import model_prompts, with_prompt

    prompts = model_prompts(model, query_prompt, document_prompt)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for column, texts in (
        ("query", with_prompt(dataset.queries, prompts[0])),
        ("positive", with_prompt(dataset.positives, prompts[1])),
    ):
        arrays[column] = encode(
            texts,
            get_encoder,
            model_info=info,
            batch_size=batch_size,
            max_seq_length=max_seq_length,
            normalize=normalize,
            cache_path=out / f"{column}.npy",
            show_progress=show_progress,
            on_stale=on_stale,
        )
    return PairEmbeddings(
        query=arrays["query"],
        positive=arrays["positive"],
        query_path=out / "query.npy",
        positive_path=out / "positive.npy",
    )
