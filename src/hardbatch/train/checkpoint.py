"""Atomic, resumable training checkpoints.

Layout of ``RUN_DIR/checkpoints/step-00000120/``::

    model/              the model in sentence-transformers format (SentenceTransformer(path) loads it)
    trainer_state.pt    optimiser, scheduler, sampler position, every rank's RNG states, counters, config

A checkpoint is written into a hidden temporary folder next to its final name and renamed into place
only when complete, so a ``kill -9`` at any moment leaves either the previous checkpoints or the new one,
never a half-written one. Only the newest ``keep`` checkpoints are kept.

Cost: writing a checkpoint is O(model size + optimiser state) in time and disk (about 3× the weights
with AdamW).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hardbatch.errors import ConfigError, DataError

__all__ = [
    "CHECKPOINT_DIR",
    "Checkpoint",
    "capture_rng_state",
    "checkpoint_problem",
    "latest_checkpoint",
    "list_checkpoints",
    "load_trainer_state",
    "prune_checkpoints",
    "replace_dir_atomically",
    "restore_rng_state",
    "save_checkpoint",
]

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "trainer_state.pt"
MODEL_DIR = "model"
_NAME = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint on disk: its step and folder."""

    step: int
    path: Path

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_DIR

    @property
    def state_path(self) -> Path:
        return self.path / STATE_FILE


def capture_rng_state() -> dict[str, Any]:
    """The state of every RNG that training draws from (python, numpy, torch CPU and CUDA)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Checkpoint]:
    """Complete checkpoints of a run, oldest first (temporary folders are ignored)."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _NAME.match(child.name)
        if match and (child / STATE_FILE).is_file() and (child / MODEL_DIR).is_dir():
            found.append(Checkpoint(int(match.group(1)), child))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Checkpoint | None:
    """The newest intact checkpoint of ``run_dir``, or ``None`` when there is none.

    A checkpoint whose files were truncated after it was written (a disk that filled up under a copy, a
    partial rsync) is skipped with a warning, and the previous one is used.

    Raises:
        DataError: checkpoints exist but none is intact (resuming would silently start afresh).
    """
    checkpoints = list_checkpoints(run_dir)
    skipped = []
    for checkpoint in reversed(checkpoints):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            if skipped:
                warnings.warn(
                    f"skipped damaged checkpoint(s) {'; '.join(skipped)}; resuming from {checkpoint.path.name}",
                    stacklevel=2,
                )
            return checkpoint
        skipped.append(f"{checkpoint.path.name} ({problem})")
    if skipped:
        raise DataError(f"{run_dir}: no intact checkpoint to resume from: {'; '.join(skipped)}")
    return None


def checkpoint_problem(checkpoint: Checkpoint) -> str | None:
    """Why a checkpoint's files are damaged (truncated state or weights), or ``None`` when intact.

    Checks the framing only (zip directory of a ``torch.save`` file, header and data length of each
    ``.safetensors`` file, JSON syntax), not the values: O(number of files), no tensor is read.
    """
    paths = [checkpoint.state_path, *sorted(checkpoint.model_path.rglob("*.safetensors"))]
    for path in paths:
        problem = _file_problem(path)
        if problem is not None:
            return f"{path.relative_to(checkpoint.path)}: {problem}"
    return None


def _file_problem(path: Path) -> str | None:
    import json
    import struct
    import zipfile

    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if path.suffix == ".safetensors":
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return "truncated"
            (length,) = struct.unpack("<Q", head)
            if 8 + length > size:
                return "truncated"
            try:
                header = json.loads(handle.read(length))
            except ValueError:
                return "unreadable header"
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return "truncated" if 8 + length + max(ends, default=0) > size else None
    if path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            return "invalid JSON"
        return None
    if path.suffix == ".pt" and not zipfile.is_zipfile(path):
        return "truncated"  # torch.save writes a zip archive; its directory sits at the end of the file
    return None


def replace_dir_atomically(tmp_dir: Path, target: Path) -> None:
    """Move a fully written ``tmp_dir`` to ``target``, replacing an existing ``target``.

    ``os.replace`` cannot replace a non-empty folder, so an existing target is first renamed aside and
    deleted after the new folder is in place; at every instant one complete version exists.
    """
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
    os.replace(tmp_dir, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    step: int,
    model: Any,
    trainer_state: dict[str, Any],
    *,
    keep: int = 2,
) -> Checkpoint:
    """Write model + trainer state for ``step`` atomically and keep only the newest ``keep`` checkpoints.

    Args:
        run_dir: the run's output folder.
        step: number of optimiser steps completed.
        model: the (unwrapped) SentenceTransformer.
        trainer_state: everything else needed to resume (tensors and plain Python objects).
        keep: how many checkpoints to keep (>= 1).

    Returns:
        The new :class:`Checkpoint`.
    """
    if keep < 1:
        raise ConfigError(f"keep must be >= 1, got {keep}")
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        model.save(str(tmp / MODEL_DIR), create_model_card=False)
        state_tmp = tmp / f".{STATE_FILE}.tmp"
        torch.save(trainer_state, state_tmp)
        _fsync_file(state_tmp)
        os.replace(state_tmp, tmp / STATE_FILE)
        replace_dir_atomically(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_checkpoints(run_dir, keep)
    return Checkpoint(step, target)


def prune_checkpoints(run_dir: str | os.PathLike[str], keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints and any stale temporary folders."""
    checkpoints = list_checkpoints(run_dir)
    for old in checkpoints[: max(0, len(checkpoints) - keep)]:
        shutil.rmtree(old.path, ignore_errors=True)
    root = Path(run_dir) / CHECKPOINT_DIR
    for child in root.iterdir() if root.is_dir() else []:
        if child.name.startswith(".tmp-step-") and not child.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(child, ignore_errors=True)


def load_trainer_state(checkpoint: Checkpoint) -> dict[str, Any]:
    """Read ``trainer_state.pt`` (it holds numpy RNG state, hence ``weights_only=False``)."""
    return torch.load(checkpoint.state_path, map_location="cpu", weights_only=False)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
