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
    "MaxSeqLength",
    "Model",
    "PairData",
    "PlanOutput",
    "TeacherDevice",
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
