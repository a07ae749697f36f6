"""Typer option aliases shared by several CLI commands, so each option is declared (name, help) once.

An alias fixes the option's names, type and help; each command still gives the default, e.g.
``batch_size: EncodeBatchSize = 64``. Options whose help differs between commands (``--batch-size`` of
``mine b3`` is "|B|, a multiple of K") keep their own declaration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = [
    "Device",
    "EncodeBatchSize",
    "ExampleBatchSize",
    "KeyBlockSize",
    "MaxSeqLength",
    "MemoryBudget",
    "Model",
    "PairData",
    "PlanOutput",
    "TeacherDevice",
    "key_block_option",
]

PairData = Annotated[
    str, typer.Argument(help="Pair data: a .jsonl/.json/.csv/.parquet file or codesearch:<split>.")
]
Model = Annotated[
    str,
    typer.Option("--model", "-m", help="'default' (packaged all-MiniLM-L6-v2) or a local model directory."),
]
EncodeBatchSize = Annotated[int, typer.Option("--batch-size", "-b", help="Texts per forward pass.")]
ExampleBatchSize = Annotated[int, typer.Option("--batch-size", "-b", help="Examples per batch.")]
MaxSeqLength = Annotated[
    int | None, typer.Option("--max-seq-length", help="Truncate inputs to this many tokens.")
]
Device = Annotated[str, typer.Option("--device", help="'auto' (CUDA if available), 'cpu', 'cuda:0', ...")]
TeacherDevice = Annotated[str, typer.Option("--device", help="'auto', 'cpu', 'cuda:0', ...")]
PlanOutput = Annotated[Path, typer.Option("--output", "-o", help="Output batch plan (.parquet).")]
KeyBlockSize = Annotated[
    str | None,
    typer.Option(
        "--key-block-size",
        help="Exact pass: positives held in memory at a time, read block by block (default: all), or "
        "'auto' (from --memory-budget).",
    ),
]
MemoryBudget = Annotated[
    str | None,
    typer.Option(
        "--memory-budget",
        help="Exact pass: memory for the resident positives and score blocks, e.g. 4GiB or 512MiB; picks "
        "the key block (--key-block-size auto).",
    ),
]

Exchange = Annotated[
    str,
    typer.Option(
        "--exchange",
        help="Under torchrun: how the positives reach the ranks: read (every rank reads all of them, from a "
        "file they share) | ring (each rank reads only its shard; the shards circulate, two held at a time; "
        "--knn exact only).",
    ),
]


def key_block_option(text: str | None) -> int | str | None:
    """``--key-block-size``'s value for the library: None, ``"auto"`` or an integer (checked there).

    Example:
        >>> key_block_option("4096"), key_block_option("auto"), key_block_option(None)
        (4096, 'auto', None)
    """
    if text is None or text.strip().lower() == "auto":
        return None if text is None else "auto"
    try:
        return int(text)
    except ValueError:
        from hardbatch.errors import ConfigError

        raise ConfigError(f"--key-block-size expects a positive integer or 'auto', got {text!r}") from None
