"""``hardbatch train``: fine-tune a sentence-transformers model with a hardbatch sampler and the tiled loss.

Also runs under ``torchrun --nproc-per-node P -m hardbatch train ...`` (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from hardbatch.errors import ConfigError


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """``["k=v", ...]`` → dict; values are parsed as JSON when possible (numbers, booleans), else strings."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--sampler-option expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_command(
        data: Annotated[
            str, typer.Argument(help="Training pairs: a .jsonl/.json/.csv/.parquet file or codesearch:train.")
        ],
        output_dir: Annotated[
            Path, typer.Option("--output-dir", "-o", help="Run folder (metrics, checkpoints, final model).")
        ],
        model: Annotated[
            str, typer.Option(help="'default' (packaged all-MiniLM-L6-v2) or a local model folder.")
        ] = "default",
        sampler: Annotated[
            str, typer.Option(help="Batch sampler: random, nodup, topic, source, gcbs, b3, random-hn.")
        ] = "random",
        batch_size: Annotated[
            int, typer.Option(help="Pairs per device and step (global batch = this × ranks).")
        ] = 64,
        plan: Annotated[
            Path | None, typer.Option(help="B3 batch plan from `hardbatch mine b3` (sampler b3).")
        ] = None,
        hard_negatives: Annotated[
            int,
            typer.Option(
                help="B3++: h hard negatives per example from the plan (sampler b3: h·|B| unified "
                "negatives per batch; random-hn: h from each query's own window)."
            ),
        ] = 0,
        preset: Annotated[
            str | None,
            typer.Option(
                help="b3-paper | b3pp-paper: the B3 paper's recipe (sampler b3, scale 50, K=32, p=30, m=100, "
                "global batch 1024; h=5 for b3pp) for every option left at its default."
            ),
        ] = None,
        query_prompt: Annotated[
            str | None,
            typer.Option(
                help="Instruction prompt prepended to queries (training, evaluation; saved on the model)."
            ),
        ] = None,
        document_prompt: Annotated[
            str | None,
            typer.Option(help="Instruction prompt prepended to documents (positives and negatives)."),
        ] = None,
        sampler_option: Annotated[
            list[str] | None,
            typer.Option("--sampler-option", help="Extra sampler argument KEY=VALUE (repeatable)."),
        ] = None,
        teacher: Annotated[
            str | None,
            typer.Option(
                help="Model that embeds the pairs for topic/gcbs/b3 without --plan (default: --model)."
            ),
        ] = None,
        gradcache_chunk: Annotated[
            int | None,
            typer.Option(
                help="Gradient cache: embed in chunks of this many texts (memory independent of batch size)."
            ),
        ] = None,
        epochs: Annotated[int, typer.Option(help="Passes over the data.")] = 1,
        max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimiser steps.")] = None,
        lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = 2e-5,
        weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.01,
        warmup_ratio: Annotated[float, typer.Option(help="Fraction of steps with linear warm-up.")] = 0.1,
        max_seq_length: Annotated[int | None, typer.Option(help="Truncate texts to this many tokens.")] = 128,
        seed: Annotated[int, typer.Option(help="Seed of the sampler, dropout and subsets.")] = 0,
        scale: Annotated[float, typer.Option(help="Inverse temperature of the InfoNCE loss.")] = 20.0,
        symmetric: Annotated[
            bool, typer.Option("--symmetric/--no-symmetric", help="Two-way (CLIP) loss.")
        ] = False,
        num_negatives: Annotated[
            int | None, typer.Option(help="Hard negatives per query from the data (default: all; 0: none).")
        ] = None,
        eval_data: Annotated[
            str | None,
            typer.Option(
                help="Evaluation pairs ('auto': codesearch:dev for codesearch:train; 'none' disables)."
            ),
        ] = "auto",
        eval_every: Annotated[
            int | None, typer.Option(help="Also evaluate every N steps (always at epoch ends).")
        ] = None,
        eval_batch_size: Annotated[int, typer.Option(help="Texts per forward pass during evaluation.")] = 64,
        max_train_pairs: Annotated[
            int | None, typer.Option(help="Train on a fixed random subset of this size.")
        ] = None,
        max_eval_pairs: Annotated[
            int | None, typer.Option(help="Evaluate on a fixed random subset of this size.")
        ] = None,
        save_every: Annotated[
            int | None, typer.Option(help="Checkpoint every N steps (always at epoch ends).")
        ] = None,
        keep_checkpoints: Annotated[int, typer.Option(help="Checkpoints to keep.")] = 2,
        log_every: Annotated[int, typer.Option(help="Write a training record every N steps.")] = 10,
        resume: Annotated[
            bool, typer.Option("--resume", help="Continue from the newest checkpoint in --output-dir.")
        ] = False,
        overwrite: Annotated[
            bool, typer.Option("--overwrite", help="Start afresh in a non-empty --output-dir.")
        ] = False,
        device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
        precision: Annotated[
            str, typer.Option(help="auto (bf16 autocast on GPU, fp32 on CPU), fp32 or bf16.")
        ] = "auto",
    ) -> None:
        """Fine-tune a model on (query, positive) pairs with a hardbatch sampler and the tiled InfoNCE loss."""
        from hardbatch.train import TrainConfig, train

        options = parse_options(sampler_option)
        if hard_negatives:
            options["num_hard_negatives"] = hard_negatives
        config = TrainConfig(
            data=data,
            output_dir=str(output_dir),
            model=model,
            sampler=sampler,
            batch_size=batch_size,
            plan=str(plan) if plan is not None else None,
            sampler_options=options,
            teacher=teacher,
            gradcache_chunk=gradcache_chunk,
            epochs=epochs,
            max_steps=max_steps,
            lr=lr,
            weight_decay=weight_decay,
            warmup_ratio=warmup_ratio,
            max_seq_length=max_seq_length,
            seed=seed,
            scale=scale,
            symmetric=symmetric,
            num_negatives=num_negatives,
            eval_data=None if eval_data in (None, "none", "") else eval_data,
            eval_every=eval_every,
            eval_batch_size=eval_batch_size,
            max_train_pairs=max_train_pairs,
            max_eval_pairs=max_eval_pairs,
            save_every=save_every,
            keep_checkpoints=keep_checkpoints,
            log_every=log_every,
            device=device,
            precision=precision,
            resume=resume,
            overwrite=overwrite,
            preset=preset,
            query_prompt=query_prompt,
            document_prompt=document_prompt,
        )
        result = train(config)
        if int(os.environ.get("RANK", "0")) == 0:
            print_summary(result)


def print_summary(result: Any) -> None:
    """A rich table with the run's counts, time, metrics and output paths."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="hardbatch train", show_header=False)
    summary = result.summary
    rows = [
        ("training pairs", summary.get("train_pairs")),
        ("sampler", summary.get("sampler")),
        ("global batch", summary.get("global_batch")),
        ("ranks", summary.get("world_size")),
        ("steps", result.steps),
        ("train seconds", f"{result.seconds:.1f}"),
        ("seconds / step", summary.get("seconds_per_step")),
    ]
    rows += [
        (f"{summary.get('eval_data')} {name}", f"{value:.4f}")
        for name, value in sorted(result.metrics.items())
    ]
    rows += [
        ("final model", result.final_model),
        ("metrics", result.output_dir / "metrics.jsonl"),
        ("report", result.output_dir / "report.md"),
    ]
    for key, value in rows:
        table.add_row(str(key), str(value))
    Console().print(table)
