"""``hardbatch demo``: built-in data → teacher → B3 mining → train B3 vs random → evaluate, in minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_command(
        output_dir: Annotated[Path, typer.Option("--output", "-o", help="Where the demo writes.")] = Path(
            "hardbatch-demo"
        ),
        train_pairs: Annotated[int | None, typer.Option(help="Training pairs (default 768).")] = None,
        test_pairs: Annotated[
            int | None, typer.Option(help="Test queries (default 600; 0 = the whole test split).")
        ] = None,
        batch_size: Annotated[int | None, typer.Option(help="Batch size of both runs (default 32).")] = None,
        epochs: Annotated[int | None, typer.Option(help="Epochs of both runs (default 1).")] = None,
        max_seq_length: Annotated[int | None, typer.Option(help="Token cap (default 64).")] = None,
        seed: Annotated[int, typer.Option(help="Seed of subsets, samplers and training.")] = 0,
        model: Annotated[
            str,
            typer.Option("--model", "-m", help="Starting model and teacher ('default': all-MiniLM-L6-v2)."),
        ] = "default",
        tiny: Annotated[
            bool, typer.Option("--tiny", help="Seconds-long smoke run: random tiny model, ~100 pairs.")
        ] = False,
    ) -> None:
        """Run the whole pipeline on built-in data: mine B3 batches, train B3 vs random, compare."""
        from rich.console import Console

        from hardbatch.app.cli.output import check_output_dir
        from hardbatch.app.demo import DemoConfig, run_demo

        check_output_dir(output_dir)
        console = Console()
        config = DemoConfig.tiny_config(str(output_dir)) if tiny else DemoConfig(output_dir=str(output_dir))
        overrides = {
            "train_pairs": train_pairs,
            "test_pairs": test_pairs,
            "batch_size": batch_size,
            "epochs": epochs,
            "max_seq_length": max_seq_length,
        }
        for key, value in overrides.items():
            if value is not None:
                setattr(config, key, value)
        if test_pairs == 0:
            config.test_pairs = None
        config.seed = seed
        if not tiny:
            config.model = model
        console.print(f"[bold]hardbatch demo[/] → {output_dir}")
        result = run_demo(config, log=lambda line: console.print(line, highlight=False, markup=False))
        console.print()
        console.print(result.table, highlight=False, markup=False)
        console.print(f"\nplot: {result.plot}\nresults: {result.output_dir / 'demo.json'}", highlight=False)
