"""Human-readable summary of a run: ``report.md`` and ``curves.png`` (matplotlib, Agg backend).

Reads only ``metrics.jsonl`` and the run's config, so it can be regenerated for any finished run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hardbatch.io import atomic_path, atomic_write
from hardbatch.train.metrics_log import MetricsLog

__all__ = ["plot_curves", "write_report"]

_HEADLINE = ("ndcg@10", "mrr@10", "recall@1", "recall@10")


def plot_curves(run_dir: str | os.PathLike[str], path: str | os.PathLike[str] | None = None) -> Path | None:
    """Plot training loss / learning rate and evaluation metrics against the step. Returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = MetricsLog(Path(run_dir) / "metrics.jsonl")
    train, evals = log.training_records(), log.eval_records()
    if not train and not evals:
        return None
    out = Path(path) if path is not None else Path(run_dir) / "curves.png"
    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        steps = [r["step"] for r in train]
        ax_loss.plot(steps, [r["loss"] for r in train], color="tab:blue", label="loss")
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel("training loss")
        ax_lr = ax_loss.twinx()
        ax_lr.plot(steps, [r["lr"] for r in train], color="tab:gray", alpha=0.5, label="lr")
        ax_lr.set_ylabel("learning rate")
        ax_loss.set_title("training")
    for metric in _HEADLINE:
        points = [(r["step"], r[metric]) for r in evals if metric in r]
        if points:
            ax_eval.plot(*zip(*points), marker="o", label=metric)
    ax_eval.set_xlabel("step")
    ax_eval.set_title(f"evaluation ({evals[0].get('split', 'eval')})" if evals else "evaluation")
    if evals:
        ax_eval.legend()
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out


def write_report(run_dir: str | os.PathLike[str], config: dict[str, Any], summary: dict[str, Any]) -> Path:
    """Write ``report.md``: configuration, data/sampler summary, final metrics and the curves.

    Args:
        run_dir: the run folder (holds ``metrics.jsonl``).
        config: the run's configuration (a ``TrainConfig`` as a dict).
        summary: facts gathered by the trainer (examples, steps, seconds, final metrics, paths).

    Returns:
        The report's path.
    """
    run_dir = Path(run_dir)
    curves = plot_curves(run_dir)
    log = MetricsLog(run_dir / "metrics.jsonl")
    evals = log.eval_records()
    lines = [f"# hardbatch training run: `{run_dir.name}`", ""]
    lines += ["## Summary", "", "| item | value |", "|---|---|"]
    for key, value in summary.items():
        if isinstance(value, dict | list):
            continue
        lines.append(f"| {key} | {_fmt(value)} |")
    if evals:
        metrics = [m for m in _HEADLINE if m in evals[-1]] + sorted(
            k for k in evals[-1] if "@" in k and k not in _HEADLINE
        )
        lines += ["", "## Evaluation", "", "| step | epoch | " + " | ".join(metrics) + " |"]
        lines.append("|---|---|" + "---|" * len(metrics))
        for record in evals:
            cells = " | ".join(_fmt(record.get(m, float("nan"))) for m in metrics)
            lines.append(f"| {record['step']} | {_fmt(record.get('epoch', ''))} | {cells} |")
    if curves is not None:
        lines += ["", "## Curves", "", f"![curves]({curves.name})"]
    lines += ["", "## Configuration", "", "| option | value |", "|---|---|"]
    for key, value in sorted(config.items()):
        lines.append(f"| {key} | `{value}` |")
    out = run_dir / "report.md"
    with atomic_write(out) as handle:
        handle.write("\n".join(lines) + "\n")
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)
