"""``hardbatch experiment``: the quality grid (samplers × batch sizes × seeds at equal training pairs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _int_list(text: str, option: str) -> tuple[int, ...]:
    """``"32,64"`` → ``(32, 64)``; anything else is a one-line error naming the option."""
    from hardbatch.errors import ConfigError

    try:
        return tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError as exc:
        raise ConfigError(f"{option} expects comma-separated integers, got {text!r}") from exc


def register(app: typer.Typer) -> None:
    @app.command("experiment")
    def experiment_command(
        output_dir: Annotated[
            Path, typer.Option("--output", "-o", help="Cells, plans and the summary go here.")
        ] = Path("hardbatch-experiment"),
        samplers: Annotated[
            str,
            typer.Option(
                help="Comma-separated rows: registered samplers (random, gcbs, topic, b3, random-hn, ...) "
                "and the grid's variants b3pp (h hard negatives per example), b3-leiden, b3-remine."
            ),
        ] = "random,gcbs,topic,b3",
        batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "32,64,512",
        seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0,1",
        train_pairs: Annotated[int, typer.Option(help="Training subset size.")] = 1024,
        test_pairs: Annotated[int, typer.Option(help="Test queries (0: all).")] = 600,
        pairs_seen: Annotated[
            int | None, typer.Option(help="Pairs every cell sees (default: train pairs).")
        ] = None,
        max_seq_length: Annotated[int, typer.Option(help="Token cap.")] = 64,
        lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 5e-5,
        model: Annotated[
            str, typer.Option("--model", "-m", help="Starting model (and teacher).")
        ] = "default",
        train_data: Annotated[str, typer.Option(help="Training pairs spec.")] = "codesearch:train",
        test_data: Annotated[str, typer.Option(help="Test pairs spec.")] = "codesearch:test",
    ) -> None:
        """Fine-tune with each sampler at each batch size (equal training pairs) and compare retrieval quality."""
        from rich.console import Console

        from hardbatch.app.cli.output import check_output_dir
        from hardbatch.app.experiment import GridConfig, format_grid, run_grid, write_grid_outputs

        check_output_dir(output_dir)
        console = Console()
        config = GridConfig(
            work_dir=str(output_dir),
            train_data=train_data,
            test_data=test_data,
            model=model,
            samplers=tuple(s for s in samplers.split(",") if s),
            batch_sizes=_int_list(batch_sizes, "--batch-sizes"),
            seeds=_int_list(seeds, "--seeds"),
            train_pairs=train_pairs,
            test_pairs=test_pairs or None,
            pairs_seen=pairs_seen,
            max_seq_length=max_seq_length,
            lr=lr,
        )
        summary = run_grid(config, log=lambda line: console.print(line, highlight=False, markup=False))
        paths = write_grid_outputs(summary, output_dir, "summary")
        console.print(format_grid(summary), highlight=False, markup=False)
        console.print(f"\ntable: {paths['md']}\nplot: {paths['png']}", highlight=False)
