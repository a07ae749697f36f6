"""Atomic file writes and content hashes shared by every artefact hardbatch writes.

Everything we write (embedding caches, batch plans, metrics) goes through :func:`atomic_write` so a crash
never leaves a half-written file that a later run would trust, and carries a hash of its inputs
(:func:`hash_texts`, :func:`hash_array`) so a stale artefact is detected instead of reused.

Permissions: a new file gets ``0o666 & ~umask`` (what ``open()`` would give, not ``mkstemp``'s private
0600), and a file that is replaced keeps its permission bits, so others on a shared file system can read
what they could read before.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "atomic_path",
    "atomic_write",
    "current_umask",
    "disk_full_as_os_error",
    "hash_array",
    "hash_texts",
    "read_json",
    "write_json",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; on success it replaces ``path`` atomically.

    Use this when a library (numpy, pyarrow) wants a file name rather than a file object.
    The temporary file is removed if the block raises.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp_path = Path(tmp)
    try:
        try:
            try:
                mode = target.stat().st_mode & 0o7777  # replacing a file never changes who may read it
            except FileNotFoundError:
                mode = 0o666 & ~current_umask()
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        yield tmp_path
        os.replace(tmp_path, target)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        if exc.filename is None and exc.errno is not None:  # write()/fsync() errors (disk full) name no file
            raise type(exc)(exc.errno, exc.strerror, str(target)) from exc
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


#: How libraries that do not raise OSError word a full disk: safetensors (Rust ``io::Error``), torch.save
#: ("PytorchStreamWriter failed writing file ...": the errno is lost, hence the free-space check).
_DISK_FULL_WORDS = (
    "No space left on device",
    "StorageFull",
    "os error 28",
    "Disk quota exceeded",
    "os error 122",
)


@contextlib.contextmanager
def disk_full_as_os_error(path: str | os.PathLike[str]) -> Iterator[None]:
    """Re-raise a library's non-``OSError`` write failure on a full disk as ``OSError(ENOSPC, ..., path)``.

    safetensors and ``torch.save`` report a full disk as their own exception types; the CLI turns an
    ``OSError`` into a one-line message naming the file (exit 2), so this makes both cases look alike.
    Any other exception passes through unchanged (a bug keeps its traceback).
    """
    try:
        yield
    except OSError:
        raise
    except Exception as exc:
        text = str(exc)
        full = any(word in text for word in _DISK_FULL_WORDS)
        if not full and "failed writing file" in text:
            with contextlib.suppress(OSError):
                full = shutil.disk_usage(Path(path).parent).free < (16 << 20)
        if full:
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from exc
        raise


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8"
) -> Iterator[IO]:
    """Open a temporary file for writing; it replaces ``path`` only if the block completes."""
    with atomic_path(path) as tmp:
        kwargs = {} if "b" in mode else {"encoding": encoding}
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path) as handle:
        json.dump(obj, handle, indent=2, sort_keys=True, default=_json_default)
        handle.write("\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def hash_texts(texts: Iterable[str]) -> str:
    """Order-sensitive SHA-256 of a sequence of strings (length-prefixed, so ["ab"] != ["a", "b"])."""
    digest = hashlib.sha256()
    count = 0
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
        count += 1
    digest.update(count.to_bytes(8, "little"))
    return digest.hexdigest()


def hash_array(array: np.ndarray) -> str:
    """SHA-256 of an array's shape, dtype and bytes (C order), read in chunks to bound memory."""
    digest = hashlib.sha256()
    digest.update(str(array.shape).encode())
    digest.update(str(array.dtype).encode())
    flat = array.reshape(len(array), -1) if array.ndim > 1 else array.reshape(-1, 1)
    step = max(1, (64 << 20) // max(1, flat.shape[1] * flat.itemsize))
    for start in range(0, len(flat), step):
        digest.update(np.ascontiguousarray(flat[start : start + step]).tobytes())
    return digest.hexdigest()
