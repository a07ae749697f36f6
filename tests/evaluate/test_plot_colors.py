"""Every plot hardbatch draws gives a strategy the same colour, and no legend covers an axes' data area."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.colors import to_hex

from hardbatch.colors import STRATEGY_COLORS, strategy_color

KNOWN = ("frozen", "random", "b3", "gcbs", "topic")


@pytest.fixture
def figures(monkeypatch):
    """Keep every figure a plot function closes, so the test can inspect it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    return kept


def _strategy_of(label):
    label = label.lower()
    found = [name for name in KNOWN if name in label]
    return found[0] if len(found) == 1 else None


def _colours_by_label(fig):
    """strategy -> set of colours of the labelled bars and lines drawn for it."""
    seen = {}
    for ax in fig.axes:
        for container in ax.containers:
            strategy = _strategy_of(container.get_label() or "")
            if strategy is None:
                continue
            if hasattr(container, "has_xerr"):  # errorbar: its data line carries the colour
                seen.setdefault(strategy, set()).add(to_hex(container.lines[0].get_color()))
            else:
                seen.setdefault(strategy, set()).update(
                    to_hex(p.get_facecolor(), keep_alpha=False) for p in container
                )
        for line in ax.lines:
            strategy = _strategy_of(line.get_label() or "")
            if strategy is not None:
                seen.setdefault(strategy, set()).add(to_hex(line.get_color()))
    return seen


def _assert_legends_clear(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    areas = [ax.get_window_extent(renderer) for ax in fig.axes]
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert legends, "the plot has legends"
    for legend in legends:
        box = legend.get_window_extent(renderer)
        assert not any(box.overlaps(area) for area in areas), "a legend covers an axes' data area"


def test_demo_experiment_and_inspect_plots_share_one_colour_per_strategy(tmp_path, figures):
    from hardbatch.app.demo import _plot
    from hardbatch.app.experiment import _plot_grid
    from hardbatch.evaluate.hardness import compare_batchings, plot_comparison

    metrics = {
        n: {"ndcg@10": v, "mrr@10": v - 0.05} for n, v in (("frozen", 0.3), ("random", 0.4), ("b3", 0.45))
    }
    hardness = {
        n: {"neg_sim_mean": v, "hardest_neg_sim_mean": 2 * v} for n, v in (("random", 0.1), ("b3", 0.3))
    }
    _plot(metrics, hardness, tmp_path / "demo.png", SimpleNamespace(batch_size=8))
    cells = [
        {"sampler": s, "batch_size": b, "ndcg@10": {"mean": 0.4 + 0.01 * b, "std": 0.01}}
        for s in ("random", "b3", "gcbs")
        for b in (8, 16)
    ]
    summary = {"cells": cells, "config": {"samplers": ["random", "b3", "gcbs"]}, "frozen": {"ndcg@10": 0.3}}
    _plot_grid(summary, tmp_path / "grid.png")
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((32, 8)).astype(np.float32)
    order = [rng.permutation(32).reshape(-1, 8).tolist() for _ in range(4)]
    batchings = dict(zip(("random", "b3", "gcbs", "topic"), order))
    plot_comparison(compare_batchings(emb, emb, batchings, k=4, device="cpu"), tmp_path / "inspect.png")
    assert len(figures) == 3
    demo, grid, inspect = figures

    per_plot = [_colours_by_label(fig) for fig in (demo, grid, inspect)]
    assert set(per_plot[0]) == {"frozen", "random", "b3"} and set(per_plot[1]) >= {"random", "b3", "gcbs"}
    for seen in per_plot:
        for strategy, colours in seen.items():
            assert colours == {STRATEGY_COLORS[strategy].lower()}, (strategy, colours)
    # inspect: each strategy's bar (named by its tick) in that strategy's colour.
    ax = inspect.axes[2]
    names = [t.get_text() for t in ax.get_xticklabels()]
    strategy_bars = ax.containers[0]
    assert names == list(batchings)
    assert [to_hex(p.get_facecolor(), keep_alpha=False) for p in strategy_bars] == [
        strategy_color(n).lower() for n in names
    ]
    for fig in (demo, grid, inspect):
        _assert_legends_clear(fig)


def test_unknown_strategies_keep_a_stable_colour_distinct_from_the_palette():
    assert strategy_color("plan:my-plan") == strategy_color("plan:my-plan")
    assert strategy_color("plan:my-plan") not in STRATEGY_COLORS.values()
    assert len(set(STRATEGY_COLORS.values())) == len(STRATEGY_COLORS)
