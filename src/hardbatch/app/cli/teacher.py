"""Teacher embeddings for the CLI commands that mine or inspect batches (``mine b3``, ``mine gcbs``, ``inspect``).

One set of options (``--query-emb``/``--positive-emb`` files, or ``--emb-dir`` + ``--max-seq-length`` for
encoding with the teacher) and one helper that either loads the given ``.npy`` files or encodes the pairs
with the teacher into a fingerprinted cache (:func:`hardbatch.embed.embed_pairs`; under torchrun every rank
encodes its share, :mod:`hardbatch.embed.sharded`), so every command reads and caches teacher embeddings the
same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from hardbatch.errors import ConfigError

__all__ = [
    "EmbDir",
    "PositiveEmb",
    "QueryEmb",
    "TeacherEmbeddings",
    "TeacherMaxSeqLength",
    "teacher_embeddings",
]

QueryEmb = Annotated[
    Path | None, typer.Option("--query-emb", help="(N, d) .npy teacher query embeddings (skips encoding).")
]
PositiveEmb = Annotated[
    Path | None, typer.Option("--positive-emb", help="(N, d) .npy teacher positive embeddings.")
]
EmbDir = Annotated[
    Path | None,
    typer.Option(
        "--emb-dir", help="Cache directory of teacher embeddings (default: under the hardbatch cache)."
    ),
]
TeacherMaxSeqLength = Annotated[
    int | None, typer.Option("--max-seq-length", help="Truncate teacher inputs to this many tokens.")
]


@dataclass
class TeacherEmbeddings:
    """(N, d) float32 query and positive embeddings and the ``.npy`` files they live in."""

    query: np.ndarray
    positive: np.ndarray
    query_path: Path
    positive_path: Path


def teacher_slug(teacher: str) -> str:
    """A file-name-safe tail of a teacher name or path (for the default cache directory)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", teacher.strip("/"))[-60:] or "teacher"


def teacher_embeddings(
    dataset: Any | None,
    teacher: str,
    *,
    query_emb: Path | None,
    positive_emb: Path | None,
    emb_dir: Path | None,
    max_seq_length: int | None,
    batch_size: int = 64,
    device: str = "auto",
    query_prompt: str | None = None,
    document_prompt: str | None = None,
) -> TeacherEmbeddings:
    """Load ``--query-emb``/``--positive-emb``, or encode ``dataset`` with ``teacher`` (cached).

    Raises:
        ConfigError: only one of the two files given, or neither files nor data.
        DataError: a file with the wrong number of rows, mismatched dimensions or non-finite values.
    """
    if (query_emb is None) != (positive_emb is None):
        raise ConfigError("give both --query-emb and --positive-emb, or neither")
    if query_emb is not None and positive_emb is not None:
        from hardbatch.embed import load_embeddings

        rows = len(dataset) if dataset is not None else None
        query = load_embeddings(query_emb, rows=rows)
        positive = load_embeddings(positive_emb, rows=len(query), dim=query.shape[1])
        return TeacherEmbeddings(query, positive, Path(query_emb), Path(positive_emb))
    if dataset is None:
        raise ConfigError("give DATA, or --query-emb and --positive-emb")
    from hardbatch.data import default_cache_dir

    # One process: embed_pairs itself; under torchrun every rank encodes its share (hardbatch.embed.sharded).
    from hardbatch.embed.sharded import embed_pairs_sharded

    suffix = f"-msl{max_seq_length}" if max_seq_length else ""
    name = f"{dataset.fingerprint[:16]}-{teacher_slug(teacher)}{suffix}"
    target = emb_dir or default_cache_dir() / "embeddings" / name
    pair = embed_pairs_sharded(
        dataset, teacher, target, batch_size=batch_size, max_seq_length=max_seq_length, device=device,
        query_prompt=query_prompt, document_prompt=document_prompt,
    )  # fmt: skip
    return TeacherEmbeddings(pair.query, pair.positive, pair.query_path, pair.positive_path)
