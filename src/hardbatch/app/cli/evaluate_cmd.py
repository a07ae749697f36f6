"""``hardbatch evaluate DATA -m MODEL [-o metrics.json]``: retrieval metrics of a model on a pair dataset."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from hardbatch.app.cli.options import Device, EncodeBatchSize, MaxSeqLength, Model, PairData
from hardbatch.app.cli.output import check_output_file

console = Console()


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)


def evaluate(
    data: PairData,
    model: Model = "default",
    batch_size: EncodeBatchSize = 64,
    max_seq_length: MaxSeqLength = None,
    corpus: Annotated[
        str,
        typer.Option("--corpus", help="'positives' (all distinct positives) or 'all' (+ hard negatives)."),
    ] = "positives",
    chunk_size: Annotated[
        int | None,
        typer.Option("--chunk-size", help="Queries per exact-search block (default: ~256 MB blocks)."),
    ] = None,
    device: Device = "auto",
    cache_dir: Annotated[
        Path | None, typer.Option("--cache-dir", help="Cache the embeddings here (reused when still valid).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the metrics as JSON here.")
    ] = None,
    directions: Annotated[
        str,
        typer.Option(
            "--directions",
            help="'auto' (both for image data: text→image and image→text), 'forward' or 'both'; "
            "the reverse direction's metrics are prefixed reverse_.",
        ),
    ] = "auto",
) -> None:
    """Each query retrieves among all distinct positives; prints nDCG@10, MRR@10, Recall@1/10/100, MAP@100."""
    from hardbatch import __version__
    from hardbatch.data import load_pairs
    from hardbatch.embed import model_fingerprint
    from hardbatch.evaluate.model_eval import direction_tasks, evaluate_texts
    from hardbatch.io import write_json
    from hardbatch.validation import check_chunk_size

    if output is not None:
        check_output_file(output)  # before embedding everything
    check_chunk_size(chunk_size, "--chunk-size")
    started = time.perf_counter()
    dataset = load_pairs(data)
    tasks = direction_tasks(dataset, corpus, directions)  # type: ignore[arg-type]
    loaded = time.perf_counter()
    seconds = {"load_data": loaded - started}
    metrics: dict[str, float] = {}
    forward = None
    if isinstance(model, str) and len(tasks) > 1:
        from hardbatch.embed.encode import resolve_encoder

        loaded_model = resolve_encoder(model, device)[0]  # one load for both directions
    else:
        loaded_model = model
    for prefix, task in tasks:
        result, spent = evaluate_texts(
            loaded_model,
            task.queries,
            task.corpus,
            task.relevant,
            batch_size=batch_size,
            max_seq_length=max_seq_length,
            chunk_size=chunk_size,
            device=device,
            cache_dir=None if cache_dir is None else cache_dir / (prefix.rstrip("_") or "."),
        )
        for stage, value in spent.items():
            seconds[prefix + stage] = value
        forward = result if not prefix else forward
        metrics.update({prefix + name: value for name, value in result.metrics.items()})
        title = "reverse: positives retrieve queries" if prefix else "queries retrieve positives"
        table = Table(
            title=f"{model} on {data} ({title}): {result.num_queries:,} queries, {result.num_corpus:,} documents"
        )
        table.add_column("metric", style="bold")
        table.add_column("value", justify="right")
        for name, value in result.metrics.items():
            table.add_row(prefix + name, f"{value:.4f}")
        console.print(table)
    seconds["total"] = time.perf_counter() - started
    console.print(
        "seconds: " + ", ".join(f"{stage} {value:.1f}" for stage, value in seconds.items()),
        highlight=False,
    )
    if output is not None:
        write_json(
            output,
            {
                "metrics": metrics,
                "directions": [prefix.rstrip("_") or "forward" for prefix, _ in tasks],
                "model": {"name": model, **model_fingerprint(model)},
                "data": {
                    "spec": data,
                    "name": dataset.name,
                    "fingerprint": dataset.fingerprint,
                    "pairs": len(dataset),
                },
                "corpus": corpus,
                "num_queries": forward.num_queries,
                "num_corpus": forward.num_corpus,
                "num_skipped_queries": forward.num_skipped,
                "params": {
                    "batch_size": batch_size,
                    "max_seq_length": max_seq_length,
                    "chunk_size": chunk_size,
                },
                "seconds": {stage: round(value, 3) for stage, value in seconds.items()},
                "hardbatch_version": __version__,
            },
        )
        console.print(f"wrote [bold]{output}[/]")
