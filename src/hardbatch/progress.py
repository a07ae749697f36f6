"""Progress bars and per-stage timing/memory reports for long-running work.

Library code calls :func:`progress` around loops; it renders a rich bar on a terminal and stays quiet when
``show=False`` or when ``HARDBATCH_PROGRESS=0`` (tests, CI logs).
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["StageTimer", "StepProgress", "peak_rss_mb", "progress", "progress_enabled", "step_progress"]


def progress_enabled(show: bool | None = None) -> bool:
    if show is not None:
        return show
    return os.environ.get("HARDBATCH_PROGRESS", "1") != "0"


def progress(
    items: Iterable[T], description: str, total: int | None = None, show: bool | None = None
) -> Iterator[T]:
    """Iterate over ``items`` with a rich progress bar (to stderr) when enabled."""
    if not progress_enabled(show):
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(file=sys.stderr), transient=False) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


class StepProgress:
    """Handle of :func:`step_progress`: call :meth:`advance` once per optimiser step."""

    def __init__(self, bar: Any = None, task: Any = None, items_per_step: int = 1) -> None:
        self._bar, self._task, self._items = bar, task, items_per_step
        self._seconds = 0.0
        self._steps = 0

    def advance(self, *, loss: float, lr: float, seconds: float) -> None:
        """One more step done: ``loss`` (mean over ranks), current ``lr``, and the step's wall ``seconds``."""
        self._steps += 1
        self._seconds += seconds
        if self._bar is None:
            return
        rate = self._steps * self._items / self._seconds if self._seconds > 0 else 0.0
        self._bar.update(self._task, advance=1, loss=f"{loss:.4f}", lr=f"{lr:.2e}", rate=f"{rate:,.0f}")


@contextlib.contextmanager
def step_progress(
    description: str,
    *,
    total: int,
    completed: int = 0,
    items_per_step: int = 1,
    show: bool | None = None,
) -> Iterator[StepProgress]:
    """A bar over training steps showing loss, learning rate and pairs/s (rich, loaded only when shown).

    Args:
        description: label, e.g. ``"epoch 1/3"``.
        total: steps in the epoch; completed: steps already done (after a resume).
        items_per_step: training pairs per step over all ranks (for pairs/s).
        show: force on/off; ``None`` follows ``HARDBATCH_PROGRESS``.

    Example:
        >>> with step_progress("epoch 1/1", total=2, show=False) as bar:
        ...     bar.advance(loss=1.0, lr=1e-3, seconds=0.1)
    """
    if not progress_enabled(show):
        yield StepProgress(items_per_step=items_per_step)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[rate]} pairs/s"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(file=sys.stderr), transient=False) as bar:
        task = bar.add_task(description, total=total, completed=completed, loss="-", lr="-", rate="-")
        yield StepProgress(bar, task, items_per_step)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    On Linux this reads ``VmHWM`` from ``/proc/self/status``: unlike ``ru_maxrss`` it is not inherited from
    the parent across ``fork``, so a measuring subprocess reports its own peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


@dataclass
class StageTimer:
    """Collects wall-clock seconds and peak RSS per named stage: ``with timer.stage("knn"): ...``."""

    seconds: dict[str, float] = field(default_factory=dict)
    peak_mb: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self.peak_mb[name] = peak_rss_mb()

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {
            name: {"seconds": round(self.seconds[name], 3), "peak_rss_mb": round(self.peak_mb[name], 1)}
            for name in self.seconds
        }
