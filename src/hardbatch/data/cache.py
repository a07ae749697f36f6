"""Building, caching and loading the built-in ``codesearch`` corpus.

A build directory holds ``train.parquet``, ``dev.parquet``, ``test.parquet`` (each a normal hardbatch pair
file that :func:`hardbatch.data.load_pairs` reads) and ``manifest.json`` (counts per package and split,
seconds). Every parquet file carries in its schema metadata the build id, the extraction parameters, the
package versions and its content hash (the dataset fingerprint). Before a cached split is used, the
parameters and versions are compared with the ones requested now and the content hash is recomputed; any
difference means the cache is stale and it is rebuilt (or :class:`StaleCacheError` is raised when
rebuilding is not allowed). It is never silently reused.

Checking a cache costs reading three parquet footers plus one pass over the requested split (O(N) text
hashing, well under a second for the ~30k default pairs). Building costs a full extraction (see
:mod:`hardbatch.data.codesearch`: about 1–2 minutes for the default packages on two cores).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardbatch.data.build_dir import build_lock, default_cache_dir, parse_spec, variant_dir
from hardbatch.data.codesearch import SPLITS, CodeSearchConfig, extract_codesearch, package_versions
from hardbatch.data.pairs import METADATA_KEY, PairDataset
from hardbatch.errors import ConfigError, DataError, StaleCacheError
from hardbatch.io import write_json

__all__ = [
    "CodeSearchBuild",
    "build_codesearch",
    "codesearch_cache_dir",
    "default_cache_dir",
    "load_codesearch",
    "parse_codesearch_spec",
    "read_parquet_metadata",
    "stale_reason",
]

MANIFEST = "manifest.json"


def codesearch_cache_dir(
    cache_dir: str | os.PathLike[str] | None = None, config: CodeSearchConfig | None = None
) -> Path:
    """Where ``load_pairs("codesearch:...")`` keeps the corpus: ``<cache dir>/codesearch`` for the default
    parameters, ``<cache dir>/codesearch-<params hash>`` for others (so two configurations never evict
    each other; a version change still rebuilds in place)."""
    default = config is None or config == CodeSearchConfig()
    return variant_dir("codesearch", cache_dir, None if default else config.params())


_SPEC_OPTIONS = {
    "packages": lambda v: tuple(p for p in v.split(",") if p),
    "max_pairs": int,
    "mask_name": lambda v: v.lower() not in ("0", "false", "no", "off"),
    "mask_token": str,
    "min_query_words": int,
    "min_code_lines": int,
    "split_fractions": lambda v: tuple(float(x) for x in v.split(",")),
}


def parse_codesearch_spec(spec: str) -> tuple[str, CodeSearchConfig]:
    """``"codesearch:<split>[?key=value&...]"`` -> (split, config).

    Keys: ``packages`` (comma-separated), ``max_pairs``, ``mask_name``, ``mask_token``, ``min_query_words``,
    ``min_code_lines``, ``split_fractions`` (comma-separated). Lets string-only interfaces (CLI ``--data``)
    ask for a small or differently masked corpus.

    Example:
        >>> split, config = parse_codesearch_spec("codesearch:dev?packages=json,email&max_pairs=100")
        >>> split, config.packages, config.max_pairs
        ('dev', ('json', 'email'), 100)
    """
    split, options = parse_spec(spec, "codesearch", _SPEC_OPTIONS, SPLITS, "codesearch:train, :dev or :test")
    return split, CodeSearchConfig(**options)


@dataclass
class CodeSearchBuild:
    """What :func:`build_codesearch` produced (or found up to date)."""

    out_dir: Path
    paths: dict[str, Path]
    counts: dict[str, int]
    stats: dict[str, dict[str, int]]
    versions: dict[str, str]
    params: dict[str, Any]
    seconds: float
    rebuilt: bool
    reason: str
    notes: list[str]


def _build_id(params: dict[str, Any], versions: dict[str, str]) -> str:
    payload = json.dumps({"params": params, "versions": versions}, sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def read_parquet_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The hardbatch JSON metadata of a parquet file (footer only), or ``None`` if absent/unreadable."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, ValueError):
        return None
    raw = metadata.get(METADATA_KEY)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _changed_keys(expected: dict[str, Any], recorded: dict[str, Any]) -> list[str]:
    """Sorted keys whose value differs between the two dicts (missing on one side counts as differing)."""
    return sorted(key for key in set(expected) | set(recorded) if expected.get(key) != recorded.get(key))


def stale_reason(out_dir: str | os.PathLike[str], config: CodeSearchConfig) -> str | None:
    """Why the build in ``out_dir`` cannot be used for ``config`` now (``None`` = up to date).

    Compares parameters and package versions recorded in each split file with the expected ones and
    checks all splits come from one build. Content hashes are verified when a split is loaded.
    """
    out = Path(out_dir)
    params = config.params()
    versions = package_versions(config.packages)
    build_ids = set()
    for split in SPLITS:
        path = out / f"{split}.parquet"
        if not path.exists():
            return f"{path} does not exist"
        meta = read_parquet_metadata(path)
        info = (meta or {}).get("codesearch")
        if not info:
            return f"{path} has no codesearch metadata"
        if info.get("params") != params:
            changed = _changed_keys(params, info.get("params", {}))
            return f"{path} was built with different parameters ({', '.join(changed)})"
        if info.get("versions") != versions:
            changed = _changed_keys(versions, info.get("versions", {}))
            details = ", ".join(
                f"{k}: {info.get('versions', {}).get(k)} -> {versions.get(k)}" for k in changed
            )
            return f"{path} was built from different package versions ({details})"
        build_ids.add(info.get("build_id"))
    if len(build_ids) != 1:
        return f"{out}: split files come from different builds"
    return None


def build_codesearch(
    out_dir: str | os.PathLike[str],
    config: CodeSearchConfig | None = None,
    *,
    force: bool = False,
    workers: int | None = None,
    show_progress: bool | None = None,
) -> CodeSearchBuild:
    """Build the codesearch corpus into ``out_dir`` unless an up-to-date build is already there.

    Args:
        out_dir: directory for ``{train,dev,test}.parquet`` and ``manifest.json``.
        config: extraction parameters (default :class:`CodeSearchConfig`).
        force: rebuild even when the existing build is up to date.
        workers: parsing processes (default: all cores); the output does not depend on it.
        show_progress: progress bar over files.

    Returns:
        :class:`CodeSearchBuild` with paths, pairs per split and per-package statistics.

    Example:
        >>> import tempfile
        >>> build = build_codesearch(tempfile.mkdtemp(), CodeSearchConfig(packages=("json",)), show_progress=False)
        >>> sorted(build.paths)
        ['dev', 'manifest', 'test', 'train']
    """
    config = config or CodeSearchConfig()
    out = Path(out_dir)
    with build_lock(out):
        reason = "forced rebuild" if force else stale_reason(out, config)
        if reason is None:
            return _existing_build(out, config)
        corpus = extract_codesearch(config, workers=workers, show_progress=show_progress)
        build_id = _build_id(corpus.params, corpus.versions)
        paths: dict[str, Path] = {}
        counts = {split: len(corpus.splits[split]) for split in SPLITS}
        for split in SPLITS:
            dataset = corpus.splits[split]
            info = {
                "build_id": build_id,
                "split": split,
                "params": corpus.params,
                "versions": corpus.versions,
                "counts": counts,
            }
            paths[split] = dataset.save(out / f"{split}.parquet", metadata={"codesearch": info})
        manifest = {
            "build_id": build_id,
            "params": corpus.params,
            "versions": corpus.versions,
            "counts": counts,
            "stats": corpus.stats,
            "seconds": round(corpus.seconds, 2),
            "fingerprints": {split: corpus.splits[split].fingerprint for split in SPLITS},
            "notes": corpus.notes,
        }
        paths["manifest"] = out / MANIFEST
        write_json(paths["manifest"], manifest)
        return CodeSearchBuild(
            out,
            paths,
            counts,
            corpus.stats,
            corpus.versions,
            corpus.params,
            corpus.seconds,
            True,
            reason,
            corpus.notes,
        )


def _existing_build(out: Path, config: CodeSearchConfig) -> CodeSearchBuild:
    from hardbatch.io import read_json

    manifest_path = out / MANIFEST
    manifest = read_json(manifest_path) if manifest_path.exists() else {}
    meta = read_parquet_metadata(out / "train.parquet") or {}
    info = meta.get("codesearch", {})
    paths = {split: out / f"{split}.parquet" for split in SPLITS}
    paths["manifest"] = manifest_path
    return CodeSearchBuild(
        out,
        paths,
        info.get("counts", {}),
        manifest.get("stats", {}),
        info.get("versions", {}),
        info.get("params", config.params()),
        float(manifest.get("seconds", 0.0)),
        False,
        "up to date",
        list(manifest.get("notes", [])),
    )


def read_pair_parquet(path: Path) -> tuple[PairDataset, dict[str, Any]]:
    """Load a parquet file written by :meth:`PairDataset.save` (trusted: no row validation, may be empty)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = read_parquet_metadata(path) or {}
    columns = set(table.column_names)
    dataset = PairDataset(
        table.column("query").to_pylist(),
        table.column("positive").to_pylist(),
        table.column("negatives").to_pylist() if "negatives" in columns else None,
        table.column("id").to_pylist(),
        table.column("source").to_pylist() if "source" in columns else None,
        name=meta.get("name", path.stem),
        validate=False,
    )
    return dataset, meta


def load_codesearch(
    split: str,
    config: CodeSearchConfig | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    rebuild: bool = True,
    workers: int | None = None,
    show_progress: bool | None = None,
) -> PairDataset:
    """One split of the codesearch corpus, built into the cache on first use and rebuilt when stale.

    Args:
        split: ``"train"``, ``"dev"`` or ``"test"``.
        config: extraction parameters (default :class:`CodeSearchConfig`).
        cache_dir: cache root (default :func:`default_cache_dir`); the corpus lives in ``<root>/codesearch``.
        rebuild: build when missing or stale; ``False`` raises :class:`StaleCacheError` instead.

    Returns:
        :class:`PairDataset` named ``codesearch-<split>`` with ``source`` = package, ``id`` =
        ``"<module>:<qualname>:<line>"``.
    """
    if split not in SPLITS:
        raise ConfigError(f"codesearch: unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    config = config or CodeSearchConfig()
    out = codesearch_cache_dir(cache_dir, config)
    for _attempt in range(2):
        reason = stale_reason(out, config)
        if reason is not None:
            if not rebuild:
                raise StaleCacheError(
                    f"codesearch cache is stale: {reason}; rebuild with `hardbatch data codesearch`"
                )
            _log(f"building codesearch corpus in {out} ({reason})")
            build_codesearch(out, config, workers=workers, show_progress=show_progress)
        path = out / f"{split}.parquet"
        dataset, meta = read_pair_parquet(path)
        if dataset.fingerprint == meta.get("fingerprint"):
            if len(dataset) == 0:
                raise DataError(
                    f"{path}: split {split!r} has no pairs (use more packages or other split_fractions)"
                )
            return dataset
        if not rebuild:
            raise StaleCacheError(
                f"{path}: content hash does not match its metadata (file modified or corrupt)"
            )
        _log(f"{path}: content hash mismatch; rebuilding")
        _force_stale(out)  # the next attempt sees missing files and rebuilds
    raise DataError(f"{out}: codesearch cache still inconsistent after a rebuild")  # pragma: no cover


def _force_stale(out: Path) -> None:
    for split in SPLITS:
        (out / f"{split}.parquet").unlink(missing_ok=True)


def _log(message: str) -> None:
    import sys

    print(f"hardbatch: {message}", file=sys.stderr)
