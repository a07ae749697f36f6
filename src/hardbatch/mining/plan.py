"""``BatchPlan``: the on-disk artefact of batch mining (clusters of exactly K examples → batches per epoch).

A plan stores *which examples belong together* (clusters of size K, mined once, offline) and turns them
into batches on demand: each epoch shuffles the clusters with a seeded, epoch-dependent RNG and puts
``batch_size / K`` clusters in every batch, optionally keeping each batch within one source.

The remainder: ``N mod K`` examples (per source when mined per source) belong to no full cluster, and
``P mod (batch_size / K)`` clusters (per source with ``same_source``) do not fill a batch in a given epoch.
With ``drop_last=True`` (training, and always under DDP) both are left out of that epoch: the left-over
*clusters* change from epoch to epoch (they follow the shuffle), the remainder *examples* (the ones METIS
placed least well) are never batched. With ``drop_last=False`` they are packed, in a random order, into
mixed batches at the end of the epoch, the last of which may be short, so every example is seen exactly
once per epoch.

File format (Parquet, written atomically): one row per example, in example order, with columns
``cluster`` (int32, -1 = remainder), optional ``source`` (int32 code), optional ``neighbors``
(list<int32>: the mutual rank-window graph METIS partitioned) and ``window`` (list<int32>: the filtered
directed rank window, used by B3++ hard negatives and by ``hardbatch inspect``) and ``skipped``
(list<int32>: each example's top-``skip`` teacher ranks and filtered candidates, its likely false
negatives, never drawn as a hard negative). Parameters, input hashes
and stage statistics are JSON in the schema metadata under ``hardbatch``.

Complexity: ``batches(epoch)`` is O(N) time and memory; save/load are O(N + stored edges).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from hardbatch.errors import ConfigError, DataError, StaleCacheError

__all__ = ["PLAN_FORMAT", "BatchPlan", "input_hashes"]


def input_hashes(query_emb: Any, positive_emb: Any, dataset_hash: str | None = None) -> dict[str, str]:
    """The hashes a plan records of what it was mined from, checked by :meth:`BatchPlan.check_matches`.

    Args:
        query_emb: (N, d) query embeddings (numpy array or tensor).
        positive_emb: (N, d) positive embeddings.
        dataset_hash: the dataset's fingerprint, when known.

    Returns:
        ``query_emb``, ``positive_emb``, ``inputs`` (both together) and, when given, ``dataset``.
    """
    from hardbatch.io import hash_array

    query_hash = hash_array(_as_numpy(query_emb))
    positive_hash = hash_array(_as_numpy(positive_emb))
    hashes = {
        "query_emb": query_hash,
        "positive_emb": positive_hash,
        "inputs": hashlib.sha256((query_hash + positive_hash).encode()).hexdigest(),
    }
    if dataset_hash is not None:
        hashes["dataset"] = str(dataset_hash)
    return hashes


def _as_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):
        return array.detach().cpu().numpy()
    return np.asarray(array)


PLAN_FORMAT = "hardbatch.batch-plan/1"
_METADATA_KEY = b"hardbatch"
_SHUFFLE_SALT = 0xB3B3
_NEGATIVE_SALT = 0xB3A5
_PER_QUERY_SALT = 0xB35F


def _csr_or_none(
    matrix: sp.sparray | sp.spmatrix | None, num_examples: int, name: str
) -> sp.csr_array | None:
    if matrix is None:
        return None
    csr = sp.csr_array(matrix)
    if csr.shape != (num_examples, num_examples):
        raise DataError(f"plan {name}: expected shape ({num_examples}, {num_examples}), got {csr.shape}")
    return csr


@dataclass
class BatchPlan:
    """Clusters of exactly K examples, with everything needed to batch them, audit them and detect staleness.

    Args:
        clusters: (P, K) int64 example ids; every row is one cluster (members sorted ascending).
        remainder: (R,) int64 example ids in no full cluster.
        num_examples: N; ``clusters`` and ``remainder`` together must be a permutation of ``range(N)``.
        params: mining parameters (``cluster_size``, ``batch_size``, ``skip``, ``window``, ``seed``, ``knn``,
            filters, ``same_source``...). ``batch_size`` and ``seed`` are the defaults of :meth:`batches`.
        hashes: input hashes (``query_emb``, ``positive_emb``, ``inputs`` = both, optionally ``dataset``).
        stats: per-stage seconds / peak RSS, edge counts, METIS cut, hardness.
        cluster_sources: (P,) int32 source code of each cluster (``None``: no sources).
        remainder_sources: (R,) int32 source code of each remainder example.
        source_names: name of each source code.
        neighbors: (N, N) sparse mutual rank-window graph (what METIS partitioned).
        window: (N, N) sparse directed rank window (row i → its candidates), for B3++ and inspection.
        skipped: (N, N) sparse likely false negatives of each example (row i → its top-``skip`` teacher
            ranks and the window candidates the filters dropped); never drawn as hard negatives.

    Example:
        >>> import numpy as np
        >>> plan = BatchPlan(np.arange(8).reshape(4, 2), np.array([8]), 9, {"cluster_size": 2, "batch_size": 4})
        >>> [len(b) for b in plan.batches(0)]
        [4, 4]
    """

    clusters: np.ndarray
    remainder: np.ndarray
    num_examples: int
    params: dict[str, Any]
    hashes: dict[str, str] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    cluster_sources: np.ndarray | None = None
    remainder_sources: np.ndarray | None = None
    source_names: list[str] | None = None
    neighbors: sp.csr_array | None = None
    window: sp.csr_array | None = None
    skipped: sp.csr_array | None = None

    def __post_init__(self) -> None:
        self.num_examples = int(self.num_examples)
        self.params = dict(self.params)
        clusters = np.asarray(self.clusters, dtype=np.int64)
        if "cluster_size" not in self.params:
            if clusters.ndim != 2:
                raise ConfigError("give params['cluster_size'] or clusters as a (P, K) array")
            self.params["cluster_size"] = int(clusters.shape[1])
        self.clusters = np.sort(clusters.reshape(-1, self.cluster_size), axis=1)
        self.remainder = np.asarray(self.remainder, dtype=np.int64).reshape(-1)
        self.params.setdefault("batch_size", self.cluster_size)
        self.params.setdefault("seed", 0)
        everything = np.concatenate([self.clusters.reshape(-1), self.remainder])
        if everything.size != self.num_examples or not np.array_equal(
            np.sort(everything), np.arange(self.num_examples)
        ):
            raise DataError(
                f"plan clusters + remainder must cover each of the {self.num_examples} examples exactly once "
                f"(got {everything.size} ids, {np.unique(everything).size} distinct)"
            )
        if self.cluster_sources is not None:
            self.cluster_sources = np.asarray(self.cluster_sources, dtype=np.int32).reshape(-1)
            self.remainder_sources = (
                np.zeros(self.remainder.size, dtype=np.int32)
                if self.remainder_sources is None
                else np.asarray(self.remainder_sources, dtype=np.int32).reshape(-1)
            )
            if (
                self.cluster_sources.size != len(self.clusters)
                or self.remainder_sources.size != self.remainder.size
            ):
                raise DataError("plan source codes do not match the clusters/remainder")
            if self.source_names is None:
                count = (
                    int(max(self.cluster_sources.max(initial=-1), self.remainder_sources.max(initial=-1))) + 1
                )
                self.source_names = [str(i) for i in range(count)]
        self.neighbors = _csr_or_none(self.neighbors, self.num_examples, "neighbors")
        self.window = _csr_or_none(self.window, self.num_examples, "window")
        self.skipped = _csr_or_none(self.skipped, self.num_examples, "skipped")
        self._warned_skipped = False
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ basic properties
    @property
    def cluster_size(self) -> int:
        """K, the number of examples per cluster."""
        return int(self.params["cluster_size"])

    @property
    def batch_size(self) -> int:
        """Default batch size (the one the plan was mined for)."""
        return int(self.params["batch_size"])

    @property
    def num_clusters(self) -> int:
        return len(self.clusters)

    @property
    def has_sources(self) -> bool:
        return self.cluster_sources is not None

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the cluster assignment (identifies the plan in sampler checkpoints)."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            digest.update(np.int64(self.num_examples).tobytes())
            digest.update(np.ascontiguousarray(self.clusters).tobytes())
            digest.update(np.ascontiguousarray(self.remainder).tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def labels(self) -> np.ndarray:
        """(N,) int64 cluster id of every example, -1 for the remainder."""
        labels = np.full(self.num_examples, -1, dtype=np.int64)
        labels[self.clusters.reshape(-1)] = np.repeat(np.arange(self.num_clusters), self.cluster_size)
        return labels

    def example_sources(self) -> np.ndarray | None:
        """(N,) int32 source code of every example, or ``None`` when the plan has no sources."""
        if self.cluster_sources is None:
            return None
        codes = np.empty(self.num_examples, dtype=np.int32)
        codes[self.clusters.reshape(-1)] = np.repeat(self.cluster_sources, self.cluster_size)
        codes[self.remainder] = self.remainder_sources
        return codes

    # ------------------------------------------------------------------ batches
    def _batch_clusters(self, batch_size: int | None) -> tuple[int, int]:
        size = self.batch_size if batch_size is None else int(batch_size)
        if size <= 0 or size % self.cluster_size != 0:
            raise ConfigError(
                f"batch_size={size} must be a positive multiple of the plan's cluster_size={self.cluster_size}"
            )
        if size > self.num_examples:
            raise ConfigError(f"batch_size={size} is larger than the data ({self.num_examples} examples)")
        return size, size // self.cluster_size

    def _use_sources(self, same_source: bool | None) -> bool:
        wanted = self.params.get("same_source", True) if same_source is None else same_source
        return bool(wanted) and self.has_sources

    def batches(
        self,
        epoch: int = 0,
        *,
        batch_size: int | None = None,
        drop_last: bool = True,
        same_source: bool | None = None,
        seed: int | None = None,
        rng: np.random.Generator | None = None,
    ) -> list[list[int]]:
        """The batches of ``epoch``: ``batch_size / K`` whole clusters each, in a seeded random order.

        Args:
            epoch: epoch number; different epochs give different groupings of clusters.
            batch_size: examples per batch, a multiple of K (default: the plan's).
            drop_last: leave out what does not fill a batch (see the module docstring); otherwise pack it
                into mixed batches at the end, the last one possibly short.
            same_source: keep each full batch within one source (default: the plan's ``same_source``,
                True when mined per source).
            seed: shuffle seed (default: the plan's); ignored when ``rng`` is given.
            rng: the random generator to draw from (samplers pass their per-epoch RNG).

        Returns:
            List of batches, each a list of example ids. Every example appears at most once; exactly once
            with ``drop_last=False``.

        Complexity: O(N) time and memory.
        """
        size, per_batch = self._batch_clusters(batch_size)
        if rng is None:
            base = self.params["seed"] if seed is None else seed
            rng = np.random.default_rng([int(base), int(epoch), _SHUFFLE_SALT])
        if self._use_sources(same_source):
            groups = [
                np.flatnonzero(self.cluster_sources == code) for code in np.unique(self.cluster_sources)
            ]
        else:
            groups = [np.arange(self.num_clusters)]
        full: list[np.ndarray] = []
        leftover: list[np.ndarray] = []
        for group in groups:
            order = group[rng.permutation(group.size)]
            usable = order.size - order.size % per_batch
            full.extend(self.clusters[order[:usable]].reshape(-1, size))
            leftover.append(self.clusters[order[usable:]].reshape(-1))
        if len(groups) > 1:
            # Interleave sources: the batch order is shuffled across sources.
            full = [full[i] for i in rng.permutation(len(full))]
        out = [batch.tolist() for batch in full]
        if not drop_last:
            tail = np.concatenate([*leftover, self.remainder])
            tail = tail[rng.permutation(tail.size)]
            out.extend(tail[start : start + size].tolist() for start in range(0, tail.size, size))
        return out

    def num_batches(
        self, *, batch_size: int | None = None, drop_last: bool = True, same_source: bool | None = None
    ) -> int:
        """Number of batches :meth:`batches` returns (the same for every epoch)."""
        size, per_batch = self._batch_clusters(batch_size)
        if self._use_sources(same_source):
            counts = np.unique(self.cluster_sources, return_counts=True)[1]
        else:
            counts = np.array([self.num_clusters])
        full = int((counts // per_batch).sum())
        if drop_last:
            return full
        tail = int((counts % per_batch).sum()) * self.cluster_size + self.remainder.size
        return full + -(-tail // size)

    # ------------------------------------------------------------------ B3++ unified hard negatives
    def _negative_rng(
        self, members: np.ndarray, epoch: int, seed: int | None, salt: int
    ) -> np.random.Generator:
        base = self.params["seed"] if seed is None else seed
        key = zlib.crc32(members.tobytes())
        return np.random.default_rng([int(base), int(epoch), salt, key])

    def excluded_negatives(self, batch: list[int] | np.ndarray) -> np.ndarray:
        """Sorted ids that may never be a hard negative of ``batch``: its members and every member's
        likely false negatives (its top-``skip`` teacher ranks and the candidates the filters dropped,
        :attr:`skipped`).

        Args:
            batch: example ids.

        Returns:
            (E,) int64 sorted distinct ids.
        """
        members = np.unique(np.asarray(batch, dtype=np.int64))
        if self.skipped is None:
            return members
        return np.union1d(members, self.skipped[members].indices.astype(np.int64))

    def _check_exclusion_data(self) -> None:
        if self.window is None:
            raise ConfigError(
                "this plan stores no rank window; mine it with store_window=True for hard negatives"
            )
        skip = self.params.get("skip", 0)
        skips = skip.values() if isinstance(skip, Mapping) else [skip]
        if self.skipped is None and max(map(int, skips), default=0) > 0 and not self._warned_skipped:
            self._warned_skipped = True
            warnings.warn(
                "this plan stores no top-skip ranks (mined by an older hardbatch or with store_window=False); "
                "hard negatives exclude only the batch members, not their likely false negatives. Re-mine "
                "the plan to exclude them.",
                stacklevel=3,
            )

    def hard_negatives(
        self, batch: list[int] | np.ndarray, count: int, *, epoch: int = 0, seed: int | None = None
    ) -> list[int]:
        """B3++ "unified" hard negatives shared by every member of ``batch`` (paper §3.2).

        Item j is drawn (without replacement) with probability ∝ Count(S_B, j), the number of batch members
        whose rank window [p, p + m) contains j. Never drawn: a batch member, or an item in *any* member's
        top-p teacher ranks or dropped by the mining filters (a likely false negative of that member; see
        :meth:`excluded_negatives`). This is stricter than the official code, which only nets such an item
        a score of -1 per top-p appearance. If fewer than ``count`` items qualify, the rest are drawn
        uniformly from the other non-excluded examples, so the loss always sees ``count`` extra columns.
        The draw is a deterministic function of (seed, epoch, batch contents): every rank and a resumed
        run agree, and a batch that recurs in another epoch gets other negatives.

        Args:
            batch: example ids of the batch.
            count: total ids returned. The paper's B3++ draws h *per example*: ask for ``h · len(batch)``
                (what :class:`~hardbatch.samplers.b3.B3BatchSampler` does).
            epoch: epoch number (changes the draw).
            seed: default: the plan's seed.

        Returns:
            ``count`` distinct example ids; use their *positive* texts as extra negatives (extra key columns
            contrasted with every query of the batch).

        Raises:
            ConfigError: no rank window stored, or fewer than ``count`` examples outside the exclusion set.

        Complexity: O(|B| · (p + m) + count) time with skip p and window m (expected; the uniform fill uses
        rejection sampling and falls back to an O(N) set difference when most examples are excluded).
        """
        self._check_exclusion_data()
        members = np.unique(np.asarray(batch, dtype=np.int64))
        if count <= 0:
            return []
        excluded = self.excluded_negatives(members)
        if count > self.num_examples - excluded.size:
            raise ConfigError(
                f"{count} hard negatives requested but only {self.num_examples - excluded.size} examples are "
                f"outside the batch and its members' top-skip ranks"
            )
        rng = self._negative_rng(members, epoch, seed, _NEGATIVE_SALT)
        candidates, counts = np.unique(self.window[members].indices.astype(np.int64), return_counts=True)
        allowed = ~np.isin(candidates, excluded, assume_unique=True)
        candidates, counts = candidates[allowed], counts[allowed]
        if candidates.size >= count:
            chosen = rng.choice(candidates, size=count, replace=False, p=counts / counts.sum())
            return chosen.astype(np.int64).tolist()
        # Too few window items: take them all, then fill uniformly from the examples not yet used.
        taken = np.union1d(excluded, candidates)
        extra = self._uniform_outside(taken, count - candidates.size, rng)
        return np.concatenate([candidates[rng.permutation(candidates.size)], extra]).astype(np.int64).tolist()

    def per_query_negatives(
        self, batch: list[int] | np.ndarray, per_query: int, *, epoch: int = 0, seed: int | None = None
    ) -> list[int]:
        """SFR-style hard negatives: ``per_query`` drawn uniformly from each member's own rank window.

        The paper's ablation baseline "random batches + h hard negatives from S" (Table 2). Exclusions are
        those of :meth:`hard_negatives` (batch members and every member's likely false negatives); a
        negative is used once per batch. A member whose window has too few allowed items gets uniform
        random examples instead.

        Args:
            batch: example ids, in batch order.
            per_query: h.
            epoch: epoch number (changes the draw).
            seed: default: the plan's seed.

        Returns:
            ``h · len(batch)`` ids, query-major: ids ``[i·h, (i+1)·h)`` were drawn for ``batch[i]``.

        Complexity: O(|B| · (p + m + h)) expected.
        """
        self._check_exclusion_data()
        order = np.asarray(batch, dtype=np.int64)
        if per_query <= 0 or order.size == 0:
            return []
        members = np.unique(order)
        used = self.excluded_negatives(members)
        if per_query * order.size > self.num_examples - used.size:
            raise ConfigError(
                f"{per_query * order.size} hard negatives requested but only "
                f"{self.num_examples - used.size} examples are outside the batch and its members' top-skip ranks"
            )
        rng = self._negative_rng(members, epoch, seed, _PER_QUERY_SALT)
        out: list[np.ndarray] = []
        taken = set(used.tolist())
        for member in order:
            row = self.window.indices[self.window.indptr[member] : self.window.indptr[member + 1]]
            row = np.asarray([j for j in row.tolist() if j not in taken], dtype=np.int64)
            pick = row[rng.permutation(row.size)[:per_query]]
            taken.update(pick.tolist())
            if pick.size < per_query:
                fill = self._uniform_outside(
                    np.asarray(sorted(taken), dtype=np.int64), per_query - pick.size, rng
                )
                taken.update(fill.tolist())
                pick = np.concatenate([pick, fill])
            out.append(pick)
        return np.concatenate(out).astype(np.int64).tolist()

    def _uniform_outside(self, taken: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
        """``size`` distinct ids drawn uniformly from ``range(N)`` minus the sorted ``taken``."""
        if size <= 0:
            return np.zeros(0, dtype=np.int64)
        free = self.num_examples - taken.size
        if taken.size * 2 < self.num_examples:
            chosen = np.zeros(0, dtype=np.int64)
            for _ in range(64):  # rejection sampling: each round keeps >= half the draws in expectation
                draws = rng.integers(self.num_examples, size=2 * (size - chosen.size) + 8)
                draws = draws[~np.isin(draws, taken)]
                chosen = np.concatenate([chosen, draws])
                _, first = np.unique(chosen, return_index=True)
                chosen = chosen[np.sort(first)]
                if chosen.size >= size:
                    return chosen[:size]
        others = np.setdiff1d(np.arange(self.num_examples), taken, assume_unique=True)
        if others.size < size:
            raise ConfigError(f"{size} more negatives needed but only {free} examples are allowed")
        return rng.choice(others, size=size, replace=False)

    # ------------------------------------------------------------------ staleness
    def check_matches(
        self,
        *,
        num_examples: int | None = None,
        expected_hash: str | Mapping[str, str] | None = None,
        source: str | os.PathLike[str] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        """Raise :class:`StaleCacheError` unless the plan was mined for this data (and these parameters).

        Args:
            num_examples: the dataset's size.
            expected_hash: a hash the plan must carry (a dataset fingerprint or
                ``hardbatch.io.hash_array`` of an embedding matrix), or a mapping of hash names
                (``query_emb``, ``positive_emb``, ``inputs``, ``dataset``) to expected values.
            source: the plan's file, named in the message.
            params: mining parameters the plan must have been mined with (``batch_size``, ``window``,
                ``seed``, ...), compared with its recorded ``params``.
        """
        where = f"plan {source}" if source is not None else "batch plan"
        changed = [
            f"{key}: {self.params.get(key)!r} (plan) != {value!r}"
            for key, value in (params or {}).items()
            if self.params.get(key) != value
        ]
        if changed:
            raise StaleCacheError(f"{where} was mined with other parameters ({'; '.join(changed)})")
        if num_examples is not None and int(num_examples) != self.num_examples:
            raise StaleCacheError(
                f"{where} was mined for {self.num_examples} examples but the data has {num_examples}; "
                "re-run `hardbatch mine b3`"
            )
        if expected_hash is None:
            return
        if isinstance(expected_hash, str):
            if expected_hash not in self.hashes.values():
                raise StaleCacheError(
                    f"{where} was mined from different inputs (hash {expected_hash[:12]}… is not among its "
                    f"input hashes {', '.join(f'{k}={v[:12]}…' for k, v in self.hashes.items()) or 'none'})"
                )
            return
        for name, value in expected_hash.items():
            if name not in self.hashes:
                raise StaleCacheError(f"{where} records no '{name}' hash, so it cannot be checked against it")
            if self.hashes[name] != value:
                raise StaleCacheError(
                    f"{where} is stale: its {name} hash {self.hashes[name][:12]}… differs from {value[:12]}…"
                )

    # ------------------------------------------------------------------ persistence
    def _metadata(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "num_examples": self.num_examples,
            "num_clusters": self.num_clusters,
            "params": self.params,
            "hashes": self.hashes,
            "stats": self.stats,
            "source_names": self.source_names,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the plan as Parquet (atomically); returns the path.

        Complexity: O(N + stored edges) time and memory.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        from hardbatch.io import _json_default, atomic_path

        columns: dict[str, pa.Array] = {"cluster": pa.array(self.labels().astype(np.int32))}
        codes = self.example_sources()
        if codes is not None:
            columns["source"] = pa.array(codes)
        for name, matrix in (
            ("neighbors", self.neighbors),
            ("window", self.window),
            ("skipped", self.skipped),
        ):
            if matrix is not None:
                offsets = pa.array(matrix.indptr.astype(np.int32 if matrix.nnz < 2**31 else np.int64))
                values = pa.array(matrix.indices.astype(np.int32))
                list_type = pa.ListArray if offsets.type == pa.int32() else pa.LargeListArray
                columns[name] = list_type.from_arrays(offsets, values)
        table = pa.table(columns)
        metadata = json.dumps(self._metadata(), default=_json_default, sort_keys=True)
        table = table.replace_schema_metadata({_METADATA_KEY: metadata.encode()})
        target = Path(path)
        with atomic_path(target) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        return target

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        expected_num_examples: int | None = None,
        expected_hash: str | Mapping[str, str] | None = None,
    ) -> BatchPlan:
        """Read a plan written by :meth:`save`, checking it against the data it will be used with.

        Args:
            path: the Parquet file.
            expected_num_examples: size of the dataset the plan will batch.
            expected_hash: see :meth:`check_matches`.

        Raises:
            DataError: the file is not a hardbatch plan or is inconsistent.
            StaleCacheError: the plan was mined for different data.
        """
        import pyarrow.parquet as pq

        path = Path(path)
        if not path.exists():
            raise DataError(f"{path}: batch plan not found")
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a corrupt/non-Parquet file
            raise DataError(f"{path}: not a readable Parquet batch plan ({exc})") from exc
        raw = (table.schema.metadata or {}).get(_METADATA_KEY)
        if raw is None:
            raise DataError(f"{path}: Parquet file has no hardbatch plan metadata")
        meta = json.loads(raw)
        if meta.get("format") != PLAN_FORMAT:
            raise DataError(
                f"{path}: unsupported plan format {meta.get('format')!r} (expected {PLAN_FORMAT})"
            )
        num_examples = int(meta["num_examples"])
        if table.num_rows != num_examples:
            raise DataError(f"{path}: {table.num_rows} rows but the metadata says {num_examples} examples")
        labels = table.column("cluster").to_numpy().astype(np.int64)
        cluster_size = int(meta["params"]["cluster_size"])
        order = np.lexsort((np.arange(num_examples), labels))
        in_cluster = order[labels[order] >= 0]
        counts = np.bincount(labels[labels >= 0], minlength=int(meta["num_clusters"]))
        if counts.size != int(meta["num_clusters"]) or (counts != cluster_size).any():
            raise DataError(
                f"{path}: column 'cluster' does not hold clusters of exactly {cluster_size} examples"
            )
        clusters = in_cluster.reshape(-1, cluster_size)
        remainder = np.flatnonzero(labels < 0)
        cluster_sources = remainder_sources = None
        if "source" in table.column_names:
            codes = table.column("source").to_numpy().astype(np.int32)
            cluster_sources, remainder_sources = codes[clusters[:, 0]], codes[remainder]

        def graph(name: str) -> sp.csr_array | None:
            if name not in table.column_names:
                return None
            column = table.column(name).combine_chunks()
            offsets = column.offsets.to_numpy()
            values = column.values.to_numpy()
            return sp.csr_array(
                (np.ones(values.size, dtype=np.int8), values, offsets), shape=(num_examples, num_examples)
            )

        plan = cls(
            clusters=clusters,
            remainder=remainder,
            num_examples=num_examples,
            params=meta["params"],
            hashes=meta.get("hashes", {}),
            stats=meta.get("stats", {}),
            cluster_sources=cluster_sources,
            remainder_sources=remainder_sources,
            source_names=meta.get("source_names"),
            neighbors=graph("neighbors"),
            window=graph("window"),
            skipped=graph("skipped"),
        )
        plan.check_matches(num_examples=expected_num_examples, expected_hash=expected_hash, source=path)
        return plan

    def summary(self) -> dict[str, Any]:
        """Counts and parameters for reports and ``hardbatch inspect``."""
        return {
            "num_examples": self.num_examples,
            "num_clusters": self.num_clusters,
            "cluster_size": self.cluster_size,
            "batch_size": self.batch_size,
            "remainder": int(self.remainder.size),
            "sources": self.source_names,
            "params": self.params,
            "stats": self.stats,
        }
