"""Atomic, resumable training checkpoints.

Layout of ``RUN_DIR/checkpoints/step-00000120/``::

    model/              the model in sentence-transformers format (SentenceTransformer(path) loads it)
    trainer_state.pt    optimiser, scheduler, sampler position, every rank's RNG states, counters, config

``trainer_state.pt`` holds only tensors and plain containers (dict, list, tuple, str, int, float, bool,
None): RNG states are converted to tensors and lists by :func:`capture_rng_state`, so the file is read with
``torch.load(weights_only=True)`` and never unpickles an arbitrary object. A crafted file (one whose pickle
names a class or a callable) is refused with a :class:`~hardbatch.errors.DataError` instead of running code.

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
from hardbatch.io import disk_full_as_os_error

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
    """The state of every RNG that training draws from (python, numpy, torch CPU and CUDA).

    Every value is a tensor or a plain list/int/float, so the state survives ``torch.save`` +
    ``torch.load(weights_only=True)`` (and ``torch.distributed`` object collectives) unchanged.
    """
    version, internal, gauss_next = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": [int(version), list(internal), gauss_next],
        "numpy": {
            "bit_generator": str(numpy_state["bit_generator"]),
            "key": torch.from_numpy(np.asarray(numpy_state["state"]["key"], dtype=np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss_next = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss_next))
    saved = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": saved["bit_generator"],
            "state": {"key": np.asarray(saved["key"], dtype=np.uint32), "pos": int(saved["pos"])},
            "has_gauss": int(saved["has_gauss"]),
            "gauss": float(saved["gauss"]),
        }
    )
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
        with disk_full_as_os_error(target / MODEL_DIR):
            model.save(str(tmp / MODEL_DIR), create_model_card=False)
        state_tmp = tmp / f".{STATE_FILE}.tmp"
        with disk_full_as_os_error(target / STATE_FILE):
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
    """Read ``trainer_state.pt`` with ``torch.load(weights_only=True)``: tensors and plain containers only.

    Raises:
        DataError: the file is truncated, not a torch file, or names an object that is not a tensor or a
            plain container (a crafted pickle is refused, never executed).
    """
    import pickle
    import zipfile

    try:
        state = torch.load(checkpoint.state_path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"{checkpoint.state_path}: not a valid hardbatch trainer state ({first[:200]}); "
            "it is never unpickled. Delete this checkpoint folder to resume from an older one"
        ) from exc
    if not isinstance(state, dict):
        raise DataError(f"{checkpoint.state_path}: expected a dict, found {type(state).__name__}")
    return state


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
