"""Check that a command's output can be written *before* it computes anything.

``mine``, ``evaluate``, ``embed`` and ``inspect`` spend minutes before they write; a read-only folder, a
file standing where a folder is expected (or the reverse) must fail at once with one line, not after the
work. The check creates nothing: it probes the nearest existing folder on the way to the output with a
temporary file (so a read-only file system, missing permissions or an exhausted quota are seen as the
kernel sees them, also for root) and removes it again. Cost: one file create + delete.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hardbatch.errors import ConfigError

__all__ = ["check_output_dir", "check_output_file"]


def check_output_file(path: str | os.PathLike[str], option: str = "-o/--output") -> Path:
    """Fail unless ``path`` can be written as a file (its folder may not exist yet).

    Args:
        path: the output file.
        option: the option that named it, for the message.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: ``path`` is a folder, a file stands where one of its folders should be, or the folder
            is not writable.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> check_output_file(folder / "new" / "plan.parquet").name
        'plan.parquet'
        >>> check_output_file(folder)
        Traceback (most recent call last):
        ...
        hardbatch.errors.ConfigError: -o/--output ...: is a folder; give a file name
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a folder; give a file name")
    _check_writable_folder(path.parent, path, option)
    return path


def check_output_dir(path: str | os.PathLike[str], option: str = "-o/--output") -> Path:
    """Fail unless ``path`` is (or can be created as) a writable folder.

    Raises:
        ConfigError: ``path`` (or one of its parents) is a file, or the folder is not writable.

    Example:
        >>> import tempfile, pathlib
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
        >>> _ = file.write_text("x")
        >>> check_output_dir(file)
        Traceback (most recent call last):
        ...
        hardbatch.errors.ConfigError: -o/--output ...x.txt: is a file, not a folder
    """
    path = Path(path)
    _check_writable_folder(path, path, option)
    return path


def _check_writable_folder(folder: Path, target: Path, option: str) -> None:
    existing = folder if str(folder) else Path(".")
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ConfigError(
            f"{option} {target}: {'' if existing == target else f'{existing} '}is a file, not a folder"
        )
    try:
        handle, probe = tempfile.mkstemp(prefix=".hardbatch-write-test-", dir=existing)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"{option} {target}: cannot write to {existing} ({reason})") from exc
    os.close(handle)
    os.unlink(probe)
