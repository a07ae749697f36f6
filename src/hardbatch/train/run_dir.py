"""The run folder of ``hardbatch train``: its marker, its lock, and what a new run may replace in it.

Guarantees (see ``docs/trust.md``):

* **Locked**: a run holds an exclusive advisory lock (``fcntl.flock``) on ``RUN_DIR/.hardbatch-run.lock``
  from before it looks at the folder until it ends; a second run on the same folder fails at once with a
  :class:`~hardbatch.errors.ConfigError` naming the holder's pid. The lock is released by the kernel when
  the process dies, so a ``kill -9`` never leaves a stale lock. (Advisory: tools that ignore it are not
  stopped; on a network file system it is as good as the file system's ``flock``.)
* **Marked**: a folder that ``hardbatch train`` created carries ``RUN_DIR/.hardbatch-run.json``. Only such
  a folder, or an empty one, is used without ``--overwrite``; a non-empty folder without the marker is
  someone else's.
* **Never deletes foreign files**: a new run replaces only hardbatch's own outputs (:data:`OUTPUTS`), and
  only in a marked folder or with ``overwrite``; any other file is left alone.

Cost: O(entries in the folder) to classify it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from hardbatch.errors import ConfigError
from hardbatch.io import write_json

__all__ = [
    "LOCK_FILE",
    "MARKER_FILE",
    "OUTPUTS",
    "RunDirLock",
    "foreign_entries",
    "is_marked",
    "own_outputs",
    "remove_outputs",
    "write_marker",
]

MARKER_FILE = ".hardbatch-run.json"
LOCK_FILE = ".hardbatch-run.lock"
#: Everything ``hardbatch train`` writes at the top of its run folder (the teacher-embedding cache is
#: validated by its hashes and kept).
OUTPUTS = ("metrics.jsonl", "checkpoints", "final", "report.md", "curves.png", "result.json", "config.json")
_OWN = {*OUTPUTS, MARKER_FILE, LOCK_FILE, "teacher-embeddings"}
_MARKER_FORMAT = 1


class RunDirLock:
    """Exclusive advisory lock on a run folder; ``with RunDirLock(path): ...`` or ``acquire``/``release``.

    Args:
        run_dir: the run folder (created if missing).

    Raises:
        ConfigError: another process holds the lock (the message names its pid).

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> with RunDirLock(folder):
        ...     try:
        ...         RunDirLock(folder).acquire()
        ...     except ConfigError as error:
        ...         print("in use" in str(error))
        True
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunDirLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory lock
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise ConfigError(
                f"{self.run_dir} is in use by another hardbatch run (pid {holder}, lock {self.path}); "
                "wait for it to finish or choose another --output-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        # The lock file itself stays: deleting it would let a third process lock a new inode meanwhile.
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def is_marked(run_dir: Path) -> bool:
    """Whether ``run_dir`` was created by ``hardbatch train`` (carries the marker file)."""
    return (run_dir / MARKER_FILE).is_file()


def write_marker(run_dir: Path) -> None:
    """Mark ``run_dir`` as a hardbatch run folder (idempotent)."""
    if not is_marked(run_dir):
        write_json(run_dir / MARKER_FILE, {"format": _MARKER_FORMAT, "written_by": "hardbatch train"})


def foreign_entries(run_dir: Path) -> list[str]:
    """Names in ``run_dir`` that hardbatch did not write (hidden temporary folders of ours excluded)."""
    if not run_dir.is_dir():
        return []
    return sorted(
        child.name
        for child in run_dir.iterdir()
        if child.name not in _OWN and not child.name.startswith((".final.", ".tmp-"))
    )


def own_outputs(run_dir: Path) -> list[str]:
    """hardbatch outputs present in ``run_dir``."""
    return [name for name in OUTPUTS if (run_dir / name).exists()]


def remove_outputs(run_dir: Path) -> list[str]:
    """Delete hardbatch's own outputs (:data:`OUTPUTS`) from ``run_dir``; nothing else. Returns the names."""
    removed = []
    for name in OUTPUTS:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed
