"""Shared plumbing of the built-in corpora's build directories (``codesearch``, ``emoji``).

Both keep a build under the hardbatch cache root, in ``<root>/<name>`` for the default parameters and
``<root>/<name>-<params hash>`` otherwise (so two configurations never evict each other), serialise
concurrent builders on that directory, and are named by a ``"<name>:<split>[?key=value&...]"`` spec.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hardbatch.errors import ConfigError

__all__ = ["build_lock", "default_cache_dir", "parse_spec", "variant_dir"]


def default_cache_dir() -> Path:
    """``$HARDBATCH_CACHE`` if set, else ``~/.cache/hardbatch`` (never inside the repository).

    Example:
        >>> (default_cache_dir() / "codesearch").name
        'codesearch'
    """
    env = os.environ.get("HARDBATCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hardbatch"


def variant_dir(name: str, cache_dir: str | os.PathLike[str] | None, params: dict[str, Any] | None) -> Path:
    """``<cache root>/<name>`` when ``params`` is ``None`` (the default parameters), else
    ``<cache root>/<name>-<first 10 hex digits of the sha256 of the sorted-key JSON of params>``.

    Example:
        >>> variant_dir("emoji", "/c", None).as_posix(), variant_dir("emoji", "/c", {"a": 1}).name[:6]
        ('/c/emoji', 'emoji-')
    """
    root = Path(cache_dir if cache_dir is not None else default_cache_dir())
    if params is None:
        return root / name
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return root / f"{name}-{digest}"


@contextlib.contextmanager
def build_lock(out_dir: Path) -> Iterator[None]:
    """Serialise concurrent builders (e.g. several torchrun ranks) on one directory (POSIX flock).

    Creates ``out_dir`` (and its ``.lock`` file) if missing.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: atomic writes still keep files consistent
        yield
        return
    with open(out_dir / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def parse_spec(
    spec: str, name: str, options: dict[str, Callable[[str], Any]], splits: tuple[str, ...], split_hint: str
) -> tuple[str, dict[str, Any]]:
    """``"<name>:<split>[?key=value&...]"`` -> (split, {key: options[key](value)}).

    Args:
        spec: the spec string.
        name: the corpus name, for messages.
        options: converter per allowed key.
        splits: the allowed split names.
        split_hint: how to name a valid split in the message (e.g. ``"emoji:train or emoji:test"``).

    Raises:
        ConfigError: an unknown key, a value its converter rejects, or an unknown split.

    Example:
        >>> parse_spec("toy:a?n=3", "toy", {"n": int}, ("a", "b"), "toy:a or toy:b")
        ('a', {'n': 3})
    """
    body = spec.split(":", 1)[1] if ":" in spec else ""
    split, _, query = body.partition("?")
    parsed: dict[str, Any] = {}
    for item in filter(None, query.split("&")):
        key, sep, value = item.partition("=")
        if not sep or key not in options:
            raise ConfigError(
                f"{spec!r}: unknown {name} option {key!r}; use key=value with keys {', '.join(options)}"
            )
        try:
            parsed[key] = options[key](value)
        except ValueError as exc:
            raise ConfigError(f"{spec!r}: bad value for {key}: {value!r}") from exc
    if split not in splits:
        raise ConfigError(f"{spec!r}: unknown {name} split {split!r}; use {split_hint}")
    return split, parsed
