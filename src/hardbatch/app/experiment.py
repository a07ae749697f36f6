"""The quality experiment: does a small mined batch beat a large random one?

A grid of fine-tuning runs, ``sampler × batch size × seed``, in which **every cell sees the same number of
training pairs** (so a batch of 512 takes 16× fewer steps than a batch of 32: equal compute, the setting of
the B3 paper's batch-size study). Every cell starts from the same model, trains on the same fixed subset
of codesearch train and is evaluated on the same subset of codesearch test (function names masked);
batch sizes from ``gradcache_from`` up use the gradient cache so their memory stays that of a chunk.

Mined samplers use one frozen teacher (by default the starting model): teacher embeddings of the training
pairs are computed once; B3 plans are mined once per batch size; GCBS (teacher graph, ``target_degree``
= batch size) and topic (k-means of teacher queries) read the same embeddings.

Resumable per cell: each finished cell writes ``cells/<sampler>-b<batch>-s<seed>.json`` (with a hash of
the settings that define it); a re-run skips cells whose file exists with the same hash.

Cost: Σ over cells of (pairs_seen model forward/backward passes + one evaluation pass over the test
subset); the teacher pass and mining are shared. Memory: the model + O(chunk) activations.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hardbatch.app.stages import mine_b3_plan, teacher_hardness, train_run
from hardbatch.errors import ConfigError
from hardbatch.io import atomic_path, atomic_write, read_json, write_json
from hardbatch.machine import describe_machine

__all__ = ["GridConfig", "run_grid", "summarize_grid"]

METRICS = ("ndcg@10", "mrr@10", "recall@1", "recall@10")


@dataclass
class GridConfig:
    """Settings of the quality grid (defaults: about 75 minutes on 2 idle CPU cores, see benchmarks/quality.py).

    Args:
        work_dir: cells, plans, teacher embeddings and the summary go here.
        train_data: training pairs spec.
        test_data: evaluation pairs spec.
        model: starting model of every cell.
        teacher: frozen teacher for mining (default: ``model``).
        samplers: sampler names (registry of :mod:`hardbatch.samplers`).
        batch_sizes: batch sizes (B3 needs multiples of ``cluster_size``).
        seeds: training seeds (the data subsets are fixed; seeds change batches, dropout, B3 shuffles).
        train_pairs: fixed random subset of the training data.
        test_pairs: fixed random subset of the test data (``None``: all of it).
        pairs_seen: training pairs every cell sees (default: ``train_pairs``, one epoch).
        max_seq_length: token cap for teacher, training and evaluation.
        lr: peak learning rate (the same for every batch size).
        warmup_ratio: warm-up fraction of each cell's steps.
        scale: InfoNCE inverse temperature.
        gradcache_from: batch sizes >= this use the gradient cache.
        gradcache_chunk: texts per chunk with the gradient cache.
        cluster_size: B3 cluster size K.
        skip: B3 rank-window start p.
        window: B3 rank-window width m.
        eval_batch_size: texts per forward pass when evaluating.
        hard_negatives: h per example for the ``b3pp`` (B3++) and ``random-hn`` cells.
        precision: training precision of every cell (:class:`~hardbatch.train.TrainConfig`'s ``precision``;
            evaluation always encodes in fp32). The precision it resolves to on this machine is part of the
            cell key.

    Sampler names are those of the registry plus ``b3pp`` (sampler b3 with ``hard_negatives`` per example),
    ``b3-leiden`` (B3 with Leiden communities instead of METIS, then the same exact-K repair) and
    ``b3-remine`` (B3 re-mined with the student at every epoch boundary: give ``pairs_seen`` >
    ``train_pairs`` so a second epoch runs).
    Every cell's key includes its sampler options (:meth:`sampler_settings`), so a changed option is a new
    cell.
    """

    work_dir: str = "hardbatch-experiment"
    train_data: str = "codesearch:train"
    test_data: str = "codesearch:test"
    model: str = "default"
    teacher: str | None = None
    samplers: tuple[str, ...] = ("random", "gcbs", "topic", "b3")
    batch_sizes: tuple[int, ...] = (32, 64, 512)
    seeds: tuple[int, ...] = (0, 1)
    train_pairs: int = 1024
    test_pairs: int | None = 600
    pairs_seen: int | None = None
    max_seq_length: int = 64
    lr: float = 5e-5
    warmup_ratio: float = 0.1
    scale: float = 20.0
    gradcache_from: int = 256
    gradcache_chunk: int = 64
    cluster_size: int = 8
    skip: int = 3
    window: int = 30
    eval_batch_size: int = 64
    hard_negatives: int = 2
    precision: str = "auto"

    @property
    def seen(self) -> int:
        return self.pairs_seen or self.train_pairs

    def training_precision(self) -> str:
        """``"fp32"`` or ``"bf16"``: what ``precision`` resolves to for training on this machine."""
        from hardbatch.device import resolve_device
        from hardbatch.train.config import training_precision

        return training_precision(self.precision, resolve_device("auto"))

    def sampler_settings(self, sampler: str, batch_size: int) -> dict[str, Any]:
        """The scalar sampler options of a cell (what the trainer gets besides plans and embeddings)."""
        settings = _CELLS.get(sampler, (sampler, None))[1]
        return settings(self, batch_size) if settings else {}

    def cell_key(self, sampler: str, batch_size: int, seed: int) -> str:
        """Hash of everything that defines one cell's result (settings and the cell's sampler options)."""
        shared = {
            k: v
            for k, v in asdict(self).items()
            if k not in ("work_dir", "samplers", "batch_sizes", "seeds", "hard_negatives")
        }
        # The precision the cells train in, not the name asked for ("auto" differs by machine); fp32 cells
        # keep the keys they had before the field existed.
        shared["precision"] = self.training_precision()
        if shared["precision"] == "fp32":
            del shared["precision"]
        options = self.sampler_settings(sampler, batch_size)
        if options:  # cells without options keep their earlier keys
            shared["sampler_options"] = options
        payload = json.dumps({"cell": [sampler, batch_size, seed], **shared}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def run_grid(
    config: GridConfig, log: Callable[[str], None] = print, train_missing: bool = True
) -> dict[str, Any]:
    """Run (or resume) every cell of the grid and return :func:`summarize_grid` of the results.

    ``train_missing=False`` trains nothing: it summarises the cells already on disk (with the hardness
    figures, which need the teacher embeddings), e.g. after cells were run in several sessions.
    """
    from hardbatch.data import load_pairs
    from hardbatch.embed import embed_pairs
    from hardbatch.samplers import SamplerInputs

    check_grid_samplers(config.samplers)
    work = Path(config.work_dir)
    (work / "cells").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train = load_pairs(config.train_data).sample(config.train_pairs, [0, 0x7A1])
    test = load_pairs(config.test_data).sample(config.test_pairs, [0, 0x7E5])
    log(f"data: {len(train)} train pairs, {len(test)} test queries; every cell sees {config.seen} pairs")
    teacher = config.teacher or config.model
    embeddings = embed_pairs(
        train, teacher, work / "teacher-embeddings", max_seq_length=config.max_seq_length, device="auto"
    )
    frozen = _frozen_metrics(config, test, work)
    log(f"frozen {config.model}: nDCG@10 {frozen['ndcg@10']:.4f}")
    hardness: dict[str, dict[int, float]] = {}
    for batch_size in config.batch_sizes:
        for sampler in config.samplers:
            community = config.sampler_settings(sampler, batch_size).get("community", "metis")
            inputs = SamplerInputs(
                dataset=train,
                plan=functools.partial(
                    _plan, config, embeddings, train, batch_size, work, community=community
                ),
                teacher=(embeddings.query, embeddings.positive),
            )
            options = _sampler_options(sampler, inputs, batch_size, config)
            hardness.setdefault(sampler, {})[batch_size] = _hardness(
                sampler, train, batch_size, options, embeddings, config.scale
            )
            for seed in config.seeds:
                if train_missing:
                    _run_cell(config, sampler, batch_size, seed, train, test, options, work, log)
    summary = summarize_grid(config, frozen, hardness)
    summary["seconds_this_run"] = round(time.perf_counter() - started, 1)
    return summary


def grid_sampler_names() -> list[str]:
    """Every name a grid row may have: the sampler registry's and the grid's own cells (``b3pp``, ...)."""
    from hardbatch.samplers import SAMPLERS

    return [*SAMPLERS, *(name for name in _CELLS if name not in SAMPLERS)]


def check_grid_samplers(samplers: Iterable[str]) -> None:
    """Refuse an unknown row name before any model runs (a typo would otherwise fail minutes in).

    Raises:
        ConfigError: names the unknown rows and lists the known ones.
    """
    known = grid_sampler_names()
    unknown = [name for name in samplers if name not in known]
    if unknown:
        raise ConfigError(f"unknown grid sampler(s) {', '.join(unknown)}; choose from {', '.join(known)}")


def _frozen_metrics(config: GridConfig, test: Any, work: Path) -> dict[str, float]:
    from hardbatch.evaluate import evaluate_model

    path = work / "frozen.json"
    key = config.cell_key("frozen", 0, 0)
    if path.exists() and read_json(path).get("key") == key:
        return read_json(path)["metrics"]
    metrics = evaluate_model(
        config.model, test, max_seq_length=config.max_seq_length, batch_size=config.eval_batch_size
    )
    write_json(path, {"key": key, "metrics": metrics})
    return metrics


_PLAN_SEED = 0  # one plan per batch size serves every training seed (the sampler's seed shuffles it)


def _plan(
    config: GridConfig,
    embeddings: Any,
    train: Any,
    batch_size: int,
    work: Path,
    community: str = "metis",
) -> Any:
    from hardbatch.errors import StaleCacheError
    from hardbatch.graph.partition import metis_mode
    from hardbatch.mining import BatchPlan
    from hardbatch.mining.plan import input_hashes

    method = "" if community == "metis" else f"-{community}"  # METIS plans keep their earlier name
    path = work / f"b3{method}-plan-b{batch_size}.parquet"
    params = {
        "community": community,
        # Plans mined before recursive bisection record no mode (their "metis" was one k-way call).
        "metis_mode": metis_mode(community),
        "batch_size": batch_size,
        "cluster_size": config.cluster_size,
        "skip": config.skip,
        "window": config.window,
        "seed": _PLAN_SEED,
        "count_self": True,
    }
    if path.exists():
        # The teacher enters through the embeddings' hashes: a changed teacher never reuses a stale plan.
        expected = input_hashes(embeddings.query, embeddings.positive, train.fingerprint)
        try:
            plan = BatchPlan.load(path)
            plan.check_matches(num_examples=len(train), expected_hash=expected, source=path, params=params)
            if plan.skipped is None:  # mined before B3++ exclusions were stored
                raise StaleCacheError(f"{path}: no likely-false-negative ranks stored")
            return plan
        except StaleCacheError:
            pass  # re-mined below and replaced atomically
    plan = mine_b3_plan(
        embeddings,
        train,
        config,
        batch_size=batch_size,
        seed=_PLAN_SEED,
        show_progress=False,
        community=community,
    )
    plan.save(path)
    return plan


def _sampler_options(sampler: str, inputs: Any, batch_size: int, config: GridConfig) -> dict[str, Any]:
    """The trainer's sampler options of a cell: its settings plus what the sampler takes from ``inputs``."""
    from hardbatch.samplers import resolve_inputs

    settings = config.sampler_settings(sampler, batch_size)
    for key in _NOT_SAMPLER_OPTIONS:
        settings.pop(key, None)
    return resolve_inputs(_sampler_name(sampler), inputs, **settings)


def _sampler_name(sampler: str) -> str:
    """Grid name → sampler registry name (``b3pp`` is sampler b3 with hard negatives)."""
    return _CELLS.get(sampler, (sampler, None))[0]


def _mined_settings(config: GridConfig, hard_negatives: bool) -> dict[str, Any]:
    settings: dict[str, Any] = {"count_self": True, "global_batches": True}
    if hard_negatives:
        settings["num_hard_negatives"] = config.hard_negatives
    return settings


#: Cell settings that are not sampler options: mining options (already in the plan the cell gets) and
#: ``remine_every``, a trainer option (the trainer hands the sampler the live student to re-mine with).
_NOT_SAMPLER_OPTIONS = ("count_self", "community", "remine_every")

#: Grid cells that are not plain registry samplers with defaults: name → (registered sampler, settings of
#: (config, batch size)). Settings are part of each cell's key.
_CELLS: dict[str, tuple[str, Callable[[GridConfig, int], dict[str, Any]] | None]] = {
    # docs/samplers.md: target_degree ≈ batch_size / 2 (= batch size collapses the graph).
    "gcbs": ("gcbs", lambda config, batch_size: {"target_degree": max(1, batch_size // 2)}),
    "b3": ("b3", lambda config, batch_size: _mined_settings(config, hard_negatives=False)),
    "b3pp": ("b3", lambda config, batch_size: _mined_settings(config, hard_negatives=True)),
    "b3-leiden": (
        "b3",
        lambda config, batch_size: {**_mined_settings(config, hard_negatives=False), "community": "leiden"},
    ),
    # Re-mined with the student at every epoch boundary (needs pairs_seen > train_pairs to act).
    "b3-remine": (
        "b3",
        lambda config, batch_size: {**_mined_settings(config, hard_negatives=False), "remine_every": 1},
    ),
    "random-hn": ("random-hn", lambda config, batch_size: _mined_settings(config, hard_negatives=True)),
}


def _hardness(
    sampler: str, train: Any, batch_size: int, options: dict[str, Any], embeddings: Any, scale: float
) -> float:
    """Mean teacher similarity of in-batch negatives in epoch 0 of this sampler."""
    import warnings

    from hardbatch.samplers import build_sampler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = build_sampler(
            _sampler_name(sampler), train, batch_size, seed=0, world_size=1, **options
        ).batches(0)
    return round(teacher_hardness(embeddings, batches, scale)["neg_sim_mean"], 4)


def _run_cell(
    config: GridConfig,
    sampler: str,
    batch_size: int,
    seed: int,
    train: Any,
    test: Any,
    options: dict[str, Any],
    work: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    name = f"{sampler}-b{batch_size}-s{seed}"
    path = work / "cells" / f"{name}.json"
    key = config.cell_key(sampler, batch_size, seed)
    if path.exists() and read_json(path).get("key") == key:
        log(f"{name}: done earlier, skipped")
        return read_json(path)
    steps = max(1, config.seen // batch_size)
    steps_per_epoch = max(1, len(train) // batch_size)
    started = time.perf_counter()
    result = train_run(
        config,
        data=train,
        eval_data=test,
        output_dir=work / "runs" / name,
        model=config.model,
        sampler=_sampler_name(sampler),
        sampler_options=options,
        batch_size=batch_size,
        seed=seed,
        # Enough epochs for the step budget even if a sampler drops a few examples per epoch.
        epochs=2 * math.ceil(steps / steps_per_epoch) + 1,
        max_steps=steps,
        warmup_ratio=config.warmup_ratio,
        gradcache_chunk=config.gradcache_chunk if batch_size >= config.gradcache_from else None,
        remine_every=config.sampler_settings(sampler, batch_size).get("remine_every"),
        eval_batch_size=config.eval_batch_size,
        precision=config.precision,
        log_every=max(1, steps // 20),
        save_final=False,
        write_report=False,
    )
    record = {
        "key": key,
        "sampler": sampler,
        "batch_size": batch_size,
        "seed": seed,
        "steps": result.steps,
        "pairs_seen": result.steps * batch_size,
        "gradcache": batch_size >= config.gradcache_from,
        "metrics": result.metrics,
        "train_seconds": round(result.seconds, 2),
        "cell_seconds": round(time.perf_counter() - started, 2),
    }
    remines = result.summary.get("sampler_config", {}).get("remines")
    if remines is not None:  # re-mined cells: how often the student re-mined the plan
        record["remines"] = remines
    write_json(path, record)
    log(
        f"{name}: {result.steps} steps, nDCG@10 {result.metrics['ndcg@10']:.4f}, "
        f"{record['cell_seconds']:.0f} s"
    )
    return record


def summarize_grid(
    config: GridConfig, frozen: dict[str, float], hardness: dict[str, dict[int, float]] | None = None
) -> dict[str, Any]:
    """Mean ± std over seeds per (sampler, batch size) from the cell files, plus the headline comparisons."""
    work = Path(config.work_dir)
    cells = []
    for sampler in config.samplers:
        for batch_size in config.batch_sizes:
            runs = []
            for seed in config.seeds:
                path = work / "cells" / f"{sampler}-b{batch_size}-s{seed}.json"
                if path.exists() and read_json(path).get("key") == config.cell_key(sampler, batch_size, seed):
                    runs.append(read_json(path))
            if not runs:
                continue
            cell = {"sampler": sampler, "batch_size": batch_size, "seeds": [r["seed"] for r in runs]}
            cell["steps"] = runs[0]["steps"]
            cell["train_seconds_mean"] = round(statistics.fmean(r["train_seconds"] for r in runs), 1)
            for metric in METRICS:
                values = [r["metrics"][metric] for r in runs]
                cell[metric] = {
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else None,  # one seed: unknown
                    "values": values,
                }
            if hardness and batch_size in hardness.get(sampler, {}):
                cell["neg_sim_mean"] = hardness[sampler][batch_size]
            cells.append(cell)
    return {
        "config": asdict(config),
        "frozen": frozen,
        "cells": cells,
        "findings": _findings(cells),
        "machine": describe_machine(),
    }


def _findings(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The comparisons the experiment is about, stated with their numbers (mean nDCG@10 ± std)."""
    by = {(c["sampler"], c["batch_size"]): c for c in cells}
    out: dict[str, Any] = {}
    small, large = [b for b in (64, 32) if ("b3", b) in by], ("random", 512)
    for b in small:
        if large in by:
            b3, rnd = by[("b3", b)]["ndcg@10"], by[large]["ndcg@10"]
            out[f"b3@{b} vs random@512"] = {
                "b3": round(b3["mean"], 4),
                "random": round(rnd["mean"], 4),
                "delta": round(b3["mean"] - rnd["mean"], 4),
                "holds": b3["mean"] > rnd["mean"],
                # None when either side ran one seed (its spread is unknown).
                "beyond_1_std": None
                if b3["std"] is None or rnd["std"] is None
                else b3["mean"] - b3["std"] > rnd["mean"] + rnd["std"],
            }
    for (sampler, batch_size), cell in sorted(by.items(), key=lambda item: (item[0][1], item[0][0])):
        baseline = by.get(("random", batch_size))
        if sampler == "random" or baseline is None:
            continue
        paired = _paired_delta(cell, baseline)
        if paired is not None:
            out[f"{sampler}@{batch_size} vs random@{batch_size}"] = paired
    for batch_size in sorted({c["batch_size"] for c in cells}):
        ranked = sorted(
            (c for c in cells if c["batch_size"] == batch_size), key=lambda c: -c["ndcg@10"]["mean"]
        )
        out[f"ordering@{batch_size}"] = [f"{c['sampler']} {c['ndcg@10']['mean']:.4f}" for c in ranked]
    return out


def _paired_delta(cell: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any] | None:
    """nDCG@10 of ``cell`` minus ``baseline`` over the seeds both ran (a seed fixes the data subset, the
    initial shuffle and dropout for both, so the per-seed difference is the fair comparison).

    ``holds``: every seed's difference is positive; ``beyond_1_std``: the mean difference exceeds the
    standard deviation of the differences (None with fewer than two common seeds).
    """
    mine = dict(zip(cell["seeds"], cell["ndcg@10"]["values"]))
    theirs = dict(zip(baseline["seeds"], baseline["ndcg@10"]["values"]))
    common = sorted(set(mine) & set(theirs))
    if not common:
        return None
    deltas = [mine[seed] - theirs[seed] for seed in common]
    mean = statistics.fmean(deltas)
    spread = statistics.stdev(deltas) if len(deltas) > 1 else None
    return {
        "delta": round(mean, 4),
        "paired_std": None if spread is None else round(spread, 4),
        "seeds": common,
        "holds": all(delta > 0 for delta in deltas),
        "beyond_1_std": None if spread is None else mean > spread,
    }


def write_grid_outputs(
    summary: dict[str, Any], results_dir: str | os.PathLike[str], name: str = "quality"
) -> dict[str, Path]:
    """Write ``<name>.json``, ``<name>.md`` (tables) and ``<name>.png`` (nDCG@10 vs batch size)."""
    results = Path(results_dir)
    results.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = results / f"{name}.json", results / f"{name}.md", results / f"{name}.png"
    write_json(json_path, summary)
    with atomic_write(md_path) as handle:
        handle.write(format_grid(summary) + f"\n\n![nDCG@10 vs batch size]({png_path.name})\n")
    _plot_grid(summary, png_path)
    return {"json": json_path, "md": md_path, "png": png_path}


def format_grid(summary: dict[str, Any]) -> str:
    """Markdown: nDCG@10 and MRR@10 (mean ± std over seeds) per sampler × batch size, and the findings."""
    cfg, cells = summary["config"], summary["cells"]
    sizes = sorted({c["batch_size"] for c in cells})
    by = {(c["sampler"], c["batch_size"]): c for c in cells}
    frozen = summary["frozen"]
    lines = [
        f"# Quality grid: {cfg['model']} fine-tuned on {cfg['train_data']} ({cfg['train_pairs']} pairs), "
        f"evaluated on {cfg['test_data']} ({cfg['test_pairs'] or 'all'} queries)",
        "",
        f"Every cell sees {cfg['pairs_seen'] or cfg['train_pairs']} training pairs (equal compute), "
        f"max_seq_length {cfg['max_seq_length']}, lr {cfg['lr']}, seeds {list(cfg['seeds'])}; batch sizes >= "
        f"{cfg['gradcache_from']} use the gradient cache (chunk {cfg['gradcache_chunk']}). "
        f"Frozen model: nDCG@10 {frozen['ndcg@10']:.4f}, MRR@10 {frozen['mrr@10']:.4f}.",
    ]
    for metric in ("ndcg@10", "mrr@10"):
        lines += ["", f"## {metric} (mean ± std over seeds)", ""]
        lines += _grid_table(cfg["samplers"], sizes, by, lambda cell, metric=metric: _mean_std(cell[metric]))
    lines += ["", "## Teacher similarity of in-batch negatives (epoch 0, higher = harder)", ""]
    lines += _grid_table(
        cfg["samplers"], sizes, by, lambda cell: f"{cell.get('neg_sim_mean', float('nan')):.3f}"
    )
    lines += ["", "## Steps and training seconds per cell (mean over seeds)", ""]
    lines += _grid_table(
        cfg["samplers"], sizes, by, lambda cell: f"{cell['steps']} steps, {cell['train_seconds_mean']:.0f} s"
    )
    lines += ["", "## Findings", ""]
    for key, value in summary["findings"].items():
        lines.append(f"- **{key}**: {json.dumps(value)}")
    machine = summary.get("machine", {})
    lines += ["", f"Machine: {json.dumps(machine)}"]
    return "\n".join(lines)


def _grid_table(
    samplers: list[str],
    sizes: list[int],
    by: dict[tuple[str, int], dict[str, Any]],
    text: Callable[[dict[str, Any]], str],
) -> list[str]:
    """Markdown table lines: a row per sampler, a column per batch size, ``text(cell)`` or "–" if not run."""
    lines = ["| sampler | " + " | ".join(f"batch {b}" for b in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for sampler in samplers:
        row = [text(by[(sampler, b)]) if (sampler, b) in by else "–" for b in sizes]
        lines.append(f"| {sampler} | " + " | ".join(row) + " |")
    return lines


def _mean_std(stats: dict[str, Any]) -> str:
    if stats["std"] is None:
        return f"{stats['mean']:.4f} (1 seed)"
    return f"{stats['mean']:.4f} ± {stats['std']:.4f}"


def _plot_grid(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hardbatch.colors import legend_outside, strategy_color

    cells = summary["cells"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    for sampler in summary["config"]["samplers"]:
        points = sorted(
            (c["batch_size"], c["ndcg@10"]["mean"], c["ndcg@10"]["std"] or 0.0)
            for c in cells
            if c["sampler"] == sampler
        )
        if points:
            xs, ys, es = zip(*points)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=sampler, color=strategy_color(sampler))
    frozen = strategy_color("frozen")
    ax.axhline(summary["frozen"]["ndcg@10"], color=frozen, linestyle="--", label="frozen")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (equal training pairs seen)")
    ax.set_ylabel("nDCG@10 (codesearch test)")
    legend_outside(ax)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
