"""``hardbatch embed DATA --model M -o DIR``: embed the query and positive columns of a pair dataset."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from hardbatch.app.cli.options import Device, EncodeBatchSize, MaxSeqLength, Model, PairData
from hardbatch.app.cli.output import check_output_dir

console = Console()


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)


def embed(
    data: PairData,
    out_dir: Annotated[
        Path, typer.Option("--output", "-o", help="Output directory for query.npy / positive.npy.")
    ],
    model: Model = "default",
    batch_size: EncodeBatchSize = 64,
    max_seq_length: MaxSeqLength = None,
    normalize: Annotated[
        bool, typer.Option("--normalize/--no-normalize", help="L2-normalise embeddings.")
    ] = True,
    device: Device = "auto",
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail on a stale cache in DIR instead of rebuilding it.")
    ] = False,
) -> None:
    """Embed queries and positives into DIR (float32 .npy + .meta.json); valid caches are reused."""
    from hardbatch.data import load_pairs
    from hardbatch.embed import embed_pairs, sidecar_path

    check_output_dir(out_dir)
    started = time.perf_counter()
    dataset = load_pairs(data)
    loaded = time.perf_counter()
    result = embed_pairs(
        dataset,
        model,
        out_dir,
        batch_size=batch_size,
        max_seq_length=max_seq_length,
        normalize=normalize,
        device=device,
        on_stale="error" if strict else "rebuild",
    )
    finished = time.perf_counter()

    table = Table(title=f"embeddings of {dataset.name}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("pairs", f"{len(dataset):,}")
    table.add_row("dimension", str(result.dim))
    table.add_row("model", model)
    table.add_row("data fingerprint", dataset.fingerprint[:16])
    table.add_row("seconds (load data / embed)", f"{loaded - started:.1f} / {finished - loaded:.1f}")
    for path in (result.query_path, result.positive_path):
        table.add_row(path.stem, f"{path}  (+ {sidecar_path(path).name})")
    console.print(table)
