"""``metrics.jsonl``: one JSON object per line (training-loss records and evaluation records).

Training records carry ``step``, ``epoch`` (fractional), ``loss`` (mean over the steps since the last
record), ``lr`` and ``seconds`` (training wall time so far). Evaluation records carry ``step``, ``epoch``,
``split`` and the metric names of :func:`hardbatch.evaluate.retrieval_metrics` (``ndcg@10``, ``mrr@10``, ...).

On resume the log is cut back to the checkpoint's step (rewritten atomically), so an interrupted and
resumed run ends with the same records as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hardbatch.errors import DataError
from hardbatch.io import atomic_write

__all__ = ["MetricsLog"]


class MetricsLog:
    """Append-only JSON-lines log of a training run.

    Args:
        path: the ``metrics.jsonl`` file.

    Example:
        >>> import tempfile, pathlib
        >>> log = MetricsLog(pathlib.Path(tempfile.mkdtemp()) / "metrics.jsonl")
        >>> log.append({"step": 1, "loss": 2.0}); log.append({"step": 2, "loss": 1.5})
        >>> log.truncate_after(1); [r["step"] for r in log.read()]
        [1]
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> None:
        """Append one record and flush it to disk (a crash loses at most the line being written)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def read(self) -> list[dict[str, Any]]:
        """All complete records (a torn last line from a crash is ignored)."""
        if not self.path.exists():
            return []
        records = []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if number == len(lines):
                    break  # the line a killed process was writing
                raise DataError(f"{self.path}, line {number}: not valid JSON ({exc.msg})") from exc
        return records

    def truncate_after(self, step: int) -> None:
        """Keep only records with ``record["step"] <= step`` (atomic rewrite)."""
        kept = [r for r in self.read() if int(r.get("step", 0)) <= step]
        with atomic_write(self.path) as handle:
            for record in kept:
                handle.write(json.dumps(record, sort_keys=True) + "\n")

    def training_records(self) -> list[dict[str, Any]]:
        return [r for r in self.read() if "loss" in r]

    def eval_records(self) -> list[dict[str, Any]]:
        return [r for r in self.read() if "split" in r]
