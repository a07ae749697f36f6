"""``hardbatch inspect``: compare batching strategies side by side on the same data, under a teacher.

    hardbatch inspect DATA [--plan PLAN.parquet] [--sampler random --sampler topic --sampler gcbs ...]
        --teacher default --batch-size 64 -o DIR

For every strategy (each ``--sampler`` over the registry, and each ``--plan`` file) one epoch of batches is
drawn and measured with teacher embeddings (:mod:`hardbatch.evaluate.hardness`): in-batch negative
similarity (mean, percentiles), in-batch InfoNCE and recall@1, each against random batches of the same
sizes; the fraction of the teacher's top-k neighbour pairs (and, for B3 plans, the plan's rank-window
edges) that land in one batch; clusters / sources per batch. Writes ``DIR/inspect.json``,
``DIR/inspect.png`` and prints a table.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from hardbatch.app.cli.options import ExampleBatchSize
from hardbatch.app.cli.output import check_output_dir
from hardbatch.app.cli.teacher import EmbDir, PositiveEmb, QueryEmb, TeacherMaxSeqLength, teacher_embeddings

console = Console()

__all__ = ["build_strategy_batches", "register"]


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_command)


def build_strategy_batches(
    names: list[str],
    dataset: Any,
    batch_size: int,
    query_emb: Any,
    positive_emb: Any,
    *,
    seed: int = 0,
    epoch: int = 0,
    options: dict[str, dict[str, Any]] | None = None,
    extras: dict[str, list[list[int]]] | None = None,
) -> tuple[dict[str, list[list[int]]], dict[str, Any], dict[str, Any]]:
    """One epoch of batches from every named sampler, built over the same data and teacher embeddings.

    Each sampler is built from the same :class:`~hardbatch.samplers.SamplerInputs` (the data, the teacher
    embeddings as a fixed teacher, one process) plus its own ``options[name]``. Short batches are kept
    unless the sampler would pack its left-overs into batches outside its scheme (B3's mixed batches).

    ``extras``, when given, receives name → per batch the sampler's extra negative columns (B3++ with
    ``num_hard_negatives``, ``random-hn``), for the false-negative diagnostics.

    Returns:
        ``(batchings, groups, details)``: name → batches; name → (N,) group labels where the sampler groups
        (topic clusters, sources, B3 clusters); name → extra information (GCBS graph stats, config).
    """
    import numpy as np

    from hardbatch.samplers import SAMPLERS, SamplerInputs, build_sampler

    batchings: dict[str, list[list[int]]] = {}
    groups: dict[str, Any] = {}
    details: dict[str, Any] = {}
    for name in names:
        if name not in SAMPLERS:
            from hardbatch.errors import ConfigError

            raise ConfigError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
        inputs = SamplerInputs(
            dataset=dataset,
            seed=seed,
            world_size=1,
            drop_last=SAMPLERS[name].mixes_leftovers,
            teacher=(query_emb, positive_emb),
        )
        sampler = build_sampler(name, inputs, batch_size, **(options or {}).get(name, {}))
        batchings[name] = sampler.batches(epoch)
        details[name] = {"config": sampler.get_config_dict()}
        if hasattr(sampler, "group_labels"):
            groups[name] = np.asarray(sampler.group_labels())
        if extras is not None and int(getattr(sampler, "num_hard_negatives", 0) or 0) > 0:
            extras[name] = [sampler.hard_negatives(batch, epoch=epoch) for batch in batchings[name]]
        if getattr(sampler, "last_stats", None):
            details[name]["gcbs"] = {k: v for k, v in sampler.last_stats.items() if k != "seconds"}
    return batchings, groups, details


def _plan_strategy(
    path: Path, num_examples: int, batch_size: int, epoch: int, seed: int, fingerprint: str | None = None
):
    from hardbatch.mining import BatchPlan

    plan = BatchPlan.load(path, expected_num_examples=num_examples)
    if fingerprint is not None and "dataset" in plan.hashes:  # mined on other data with the same N
        plan.check_matches(expected_hash={"dataset": fingerprint}, source=path)
    size = batch_size if batch_size % plan.cluster_size == 0 else plan.batch_size
    batches = plan.batches(epoch, batch_size=size, drop_last=True)
    pairs = None
    window = getattr(plan, "window", None)
    if window is not None and window.nnz:
        coo = window.tocoo()
        pairs = (coo.row.astype("int64"), coo.col.astype("int64"))
    return batches, plan.labels(), pairs, plan.summary()


def _print_table(report: dict[str, Any]) -> None:
    table = Table(title=f"Batch hardness under the teacher (N={report['num_examples']})")
    for column in (
        "strategy", "batches", "neg sim mean (rand)", "neg p90", "hardest neg (rand)", "InfoNCE (rand)",
        "recall@1 (rand)", f"top-{report['k']} pairs in batch (rand)", "own pairs in batch", "groups/batch",
        "FN: above pos (rand)", "FN: dup text", "FN: extra above pos",
    ):  # fmt: skip
        table.add_column(column, justify="right" if column != "strategy" else "left")
    for name, e in report["strategies"].items():
        r = e["random"]
        table.add_row(
            name,
            str(e["batches"]),
            f"{e.get('neg_sim_mean', float('nan')):.3f} ({r.get('neg_sim_mean', float('nan')):.3f})",
            f"{e.get('neg_sim_p90', float('nan')):.3f}",
            f"{e.get('hardest_neg_sim_mean', float('nan')):.3f} ({r.get('hardest_neg_sim_mean', float('nan')):.3f})",
            f"{e.get('infonce', float('nan')):.3f} ({r.get('infonce', float('nan')):.3f})",
            f"{e.get('recall@1', float('nan')):.3f} ({r.get('recall@1', float('nan')):.3f})",
            f"{e.get('knn_pair_coverage', float('nan')):.3f} ({e.get('random_knn_pair_coverage', float('nan')):.4f})",
            f"{e['own_pair_coverage']:.3f} ({e['random_own_pair_coverage']:.4f})" if "own_pair_coverage" in e else "-",
            f"{e['groups']['groups_per_batch_mean']:.1f}" if "groups" in e else "-",
            *_false_negative_cells(e),
        )  # fmt: skip
    console.print(table)


def _false_negative_cells(entry: dict[str, Any]) -> list[str]:
    fn = entry.get("false_negatives")
    if not fn:
        return ["-", "-", "-"]
    rand = entry["random"].get("false_negatives", {})
    return [
        f"{fn['above_positive']:.4f} ({rand.get('above_positive', float('nan')):.4f})",
        f"{fn['duplicate_text']:.4f}" if "duplicate_text" in fn else "-",
        f"{fn['extra_above_positive']:.4f}" if "extra_above_positive" in fn else "-",
    ]


def _parse_options(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``--option gcbs.target_degree=64`` → ``{"gcbs": {"target_degree": 64}}`` (values parsed as JSON if possible)."""
    import json

    from hardbatch.errors import ConfigError

    parsed: dict[str, dict[str, Any]] = {}
    for item in items or []:
        match = re.fullmatch(r"([a-z0-9_-]+)\.([A-Za-z_][A-Za-z0-9_]*)=(.*)", item)
        if not match:
            raise ConfigError(f"--option {item!r}: expected SAMPLER.NAME=VALUE, e.g. gcbs.target_degree=64")
        sampler, key, raw = match.groups()
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        parsed.setdefault(sampler, {})[key] = value
    return parsed


def inspect_command(
    data: Annotated[
        str,
        typer.Argument(help="Pair data (.jsonl/.json/.csv/.parquet or codesearch:<split>)."),
    ],
    out: Annotated[
        Path, typer.Option("--output", "-o", help="Output directory (inspect.json, inspect.png).")
    ] = Path("inspect"),
    sampler: Annotated[
        list[str] | None,
        typer.Option(
            "--sampler",
            "-s",
            help="Sampler to compare (repeat): random, nodup, topic, source, gcbs, b3, random-hn.",
        ),
    ] = None,
    plan: Annotated[
        list[Path] | None, typer.Option("--plan", "-p", help="Batch plan file to compare (repeat).")
    ] = None,
    teacher: Annotated[
        str, typer.Option("--teacher", "-t", help="'default' (all-MiniLM-L6-v2) or a model dir.")
    ] = "default",
    batch_size: ExampleBatchSize = 64,
    k: Annotated[
        int, typer.Option("--k", help="Teacher neighbours per query for pair coverage (0: skip).")
    ] = 10,
    epoch: Annotated[int, typer.Option("--epoch", help="Which epoch's batches to draw.")] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Sampler seed (and of the random reference).")] = 0,
    scale: Annotated[float, typer.Option("--scale", help="InfoNCE inverse temperature.")] = 20.0,
    option: Annotated[
        list[str] | None, typer.Option("--option", help="Sampler option SAMPLER.NAME=VALUE (repeat).")
    ] = None,
    query_emb: QueryEmb = None,
    positive_emb: PositiveEmb = None,
    emb_dir: EmbDir = None,
    max_seq_length: TeacherMaxSeqLength = None,
) -> None:
    """Compare batch samplers and plans side by side: batch hardness under a teacher, with a plot."""
    from hardbatch.data import load_pairs
    from hardbatch.errors import ConfigError
    from hardbatch.evaluate.hardness import compare_batchings, plot_comparison
    from hardbatch.io import write_json
    from hardbatch.train.config import check_sampler_options

    check_output_dir(out)
    for name, given in _parse_options(option).items():  # before loading or embedding anything
        check_sampler_options(name, given, option=f"--option {name}.")
    started = time.perf_counter()
    names = list(sampler or [])
    if not names and not plan:
        names = ["random", "topic", "gcbs"]
    dataset = load_pairs(data)
    if batch_size > len(dataset):
        raise ConfigError(f"--batch-size {batch_size} is larger than the data ({len(dataset)} pairs)")
    teacher_emb = teacher_embeddings(
        dataset, teacher, query_emb=query_emb, positive_emb=positive_emb, emb_dir=emb_dir,
        max_seq_length=max_seq_length,
    )  # fmt: skip
    query, positive = teacher_emb.query, teacher_emb.positive
    extras: dict[str, list[list[int]]] = {}
    batchings, groups, details = build_strategy_batches(
        names, dataset, batch_size, query, positive, seed=seed, epoch=epoch, options=_parse_options(option),
        extras=extras,
    )  # fmt: skip
    pairs = {}
    for path in plan or []:
        label = f"plan:{path.stem}"
        batchings[label], groups[label], plan_pairs, summary = _plan_strategy(
            path, len(dataset), batch_size, epoch, seed, dataset.fingerprint
        )
        details[label] = {"plan": summary}
        if plan_pairs is not None:
            pairs[label] = plan_pairs
    report = compare_batchings(
        query, positive, batchings, k=k, pairs=pairs, groups=groups, scale=scale, seed=seed,
        texts=list(dataset.positives), extras=extras,
    )  # fmt: skip
    report.update(
        data=data, teacher=teacher if query_emb is None else str(query_emb), batch_size=batch_size, epoch=epoch,
        seed=seed, details=details,
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "inspect.json", report)
    plot_comparison(report, out / "inspect.png")
    _print_table(report)
    console.print(
        f"[green]inspected[/] {len(batchings)} strategies on {len(dataset)} pairs in "
        f"{time.perf_counter() - started:.1f} s → {out / 'inspect.json'}, {out / 'inspect.png'}"
    )
