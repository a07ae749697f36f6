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
from typing import TypeVar

T = TypeVar("T")

__all__ = ["StageTimer", "peak_rss_mb", "progress", "progress_enabled"]


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
    # rich is loaded only when a bar is drawn, so importing the library never pulls it in.
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
