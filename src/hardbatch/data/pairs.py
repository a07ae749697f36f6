"""The in-memory pair dataset every hardbatch stage consumes.

A :class:`PairDataset` holds aligned columns of ``(query, positive)`` texts plus optional hard negatives,
ids and a source label per pair. It is a map-style ``torch.utils.data.Dataset`` and converts to a Hugging
Face ``datasets.Dataset`` in the column layout sentence-transformers trainers expect. Any query, positive
or negative may instead be an image, held as a lazy :class:`hardbatch.data.images.ImageRef` (decoded only
when a batch needs it).

Memory is O(total text length); every operation here is a single pass over the columns (O(N)).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hardbatch.data.images import ImageRef, value_token
from hardbatch.errors import DataError, require
from hardbatch.io import atomic_path, atomic_write, hash_texts

__all__ = ["FORMAT_VERSION", "METADATA_KEY", "PairDataset"]

# Key under which hardbatch stores its JSON metadata in a parquet file's schema metadata.
METADATA_KEY = b"hardbatch"
FORMAT_VERSION = 1


class PairDataset(torch.utils.data.Dataset):
    """Aligned (query, positive[, negatives]) text pairs with ids and optional sources.

    Args:
        queries: one query text per pair (non-empty strings).
        positives: the matching positive text per pair (non-empty strings).
        negatives: optional hard negatives per pair (a list of non-empty strings each; lists may differ in
            length, including empty).
        ids: unique string id per pair; ``"row-<i>"`` when omitted.
        sources: optional group label per pair (e.g. the package a code snippet came from).
        name: a short human-readable name (used in messages and output names).
        validate: check types, emptiness, lengths and id uniqueness (O(N)); loaders that validated with
            file/line context pass ``False``.

    Returns:
        A dataset whose ``__getitem__(i)`` is ``{"query", "positive", ["negatives"], "id", ["source"]}``.

    Example:
        >>> ds = PairDataset(["what is 2+2"], ["four"], name="toy")
        >>> len(ds), ds[0]["id"], ds[0]["positive"]
        (1, 'row-0', 'four')
    """

    def __init__(
        self,
        queries: Sequence[str],
        positives: Sequence[str],
        negatives: Sequence[Sequence[str]] | None = None,
        ids: Sequence[str] | None = None,
        sources: Sequence[str] | None = None,
        *,
        name: str = "pairs",
        validate: bool = True,
    ) -> None:
        self.queries: list[str] = list(queries)
        self.positives: list[str] = list(positives)
        self.negatives: list[list[str]] | None = (
            None if negatives is None else [row if type(row) is list else list(row) for row in negatives]
        )
        self.ids: list[str] = (
            [f"row-{i}" for i in range(len(self.queries))] if ids is None else [str(i) for i in ids]
        )
        self.sources: list[str] | None = None if sources is None else list(sources)
        self.name = name
        self._fingerprint: str | None = None
        if validate:
            self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        sizes = {"queries": len(self.queries), "positives": len(self.positives), "ids": len(self.ids)}
        if self.negatives is not None:
            sizes["negatives"] = len(self.negatives)
        if self.sources is not None:
            sizes["sources"] = len(self.sources)
        if len(set(sizes.values())) > 1:
            listed = ", ".join(f"{key}={value}" for key, value in sizes.items())
            raise DataError(f"{self.name}: mismatched column lengths: {listed}")
        if not self.queries:
            raise DataError(f"{self.name}: empty dataset (no pairs)")
        for field, column in (("query", self.queries), ("positive", self.positives)):
            for row, text in enumerate(column):
                _check_text(text, f"{self.name}: row {row}", field)
        if self.negatives is not None:
            for row, negs in enumerate(self.negatives):
                for k, text in enumerate(negs):
                    _check_text(text, f"{self.name}: row {row}", f"negatives[{k}]")
        if self.sources is not None:
            for row, text in enumerate(self.sources):
                _check_text(text, f"{self.name}: row {row}", "source")
        seen: dict[str, int] = {}
        for row, ident in enumerate(self.ids):
            if not ident:
                raise DataError(f"{self.name}: row {row}: field 'id' is empty")
            if ident in seen:
                raise DataError(
                    f"{self.name}: row {row}: field 'id': duplicate id {ident!r} (first seen in row {seen[ident]})"
                )
            seen[ident] = row

    # ------------------------------------------------------------------ dataset protocol
    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not isinstance(index, int):
            index = int(index)  # numpy / torch integer scalars from samplers
        item: dict[str, Any] = {"query": self.queries[index], "positive": self.positives[index]}
        if self.negatives is not None:
            item["negatives"] = self.negatives[index]
        item["id"] = self.ids[index]
        if self.sources is not None:
            item["source"] = self.sources[index]
        return item

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for index in range(len(self)):
            yield self[index]

    def __repr__(self) -> str:
        extra = []
        if self.negatives is not None:
            extra.append(f"negatives<={self.max_negatives}")
        if self.sources is not None:
            extra.append(f"sources={len(set(self.sources))}")
        tail = (", " + ", ".join(extra)) if extra else ""
        return f"PairDataset(name={self.name!r}, pairs={len(self)}{tail})"

    # ------------------------------------------------------------------ derived properties
    @property
    def fingerprint(self) -> str:
        """SHA-256 over all columns (order-sensitive, name excluded): equal contents give equal hashes."""
        if self._fingerprint is None:
            self._fingerprint = hash_texts(self._fingerprint_stream())
        return self._fingerprint

    def _fingerprint_stream(self) -> Iterator[str]:
        # Section headers carry the column length so columns cannot bleed into each other.
        # Images contribute their content hash (value_token), so a moved image folder keeps the fingerprint.
        yield f"queries:{len(self.queries)}"
        yield from map(value_token, self.queries)
        yield f"positives:{len(self.positives)}"
        yield from map(value_token, self.positives)
        if self.negatives is not None:
            yield f"negatives:{len(self.negatives)}"
            for negs in self.negatives:
                yield json.dumps([value_token(v) for v in negs], ensure_ascii=False)
        yield f"ids:{len(self.ids)}"
        yield from self.ids
        if self.sources is not None:
            yield f"sources:{len(self.sources)}"
            yield from self.sources

    @property
    def has_images(self) -> bool:
        """True when any query, positive or negative is an image (one O(N) scan)."""
        columns = [self.queries, self.positives] + ([] if self.negatives is None else self.negatives)
        return any(type(v) is ImageRef for column in columns for v in column)

    @property
    def max_negatives(self) -> int:
        """Largest number of negatives on any pair (0 without negatives)."""
        return max((len(row) for row in self.negatives), default=0) if self.negatives is not None else 0

    # ------------------------------------------------------------------ transformations
    def sample(self, size: int | None, seed: int | Sequence[int]) -> PairDataset:
        """``size`` rows drawn without replacement, kept in their original order (``self`` if size >= N).

        Args:
            size: rows to keep; ``None`` keeps all.
            seed: seed (or seed sequence) of ``numpy.random.default_rng``; the same seed gives the same rows.

        Example:
            >>> PairDataset(["a", "b", "c"], ["x", "y", "z"]).sample(2, seed=0).queries
            ['b', 'c']
        """
        if size is None or size >= len(self):
            return self
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(self), size=int(size), replace=False))
        return self.subset(keep.tolist())

    def subset(self, indices: Iterable[int], name: str | None = None) -> PairDataset:
        """A new dataset with the rows at ``indices`` (in that order; O(len(indices))).

        Example:
            >>> PairDataset(["a b", "c d"], ["x", "y"]).subset([1]).ids
            ['row-1']
        """
        picked = [int(i) for i in indices]
        n = len(self)
        for i in picked:
            if not -n <= i < n:
                raise IndexError(f"{self.name}: index {i} out of range for {n} pairs")
        return PairDataset(
            [self.queries[i] for i in picked],
            [self.positives[i] for i in picked],
            None if self.negatives is None else [self.negatives[i] for i in picked],
            [self.ids[i] for i in picked],
            None if self.sources is None else [self.sources[i] for i in picked],
            name=self.name if name is None else name,
            validate=False,
        )

    def duplicate_pair_rows(self) -> list[int]:
        """Rows whose exact (query, positive) already occurred in an earlier row."""
        seen: set[tuple[str, str]] = set()
        dups = []
        for row, key in enumerate(zip(self.queries, self.positives)):
            if key in seen:
                dups.append(row)
            else:
                seen.add(key)
        return dups

    def drop_duplicates(self) -> PairDataset:
        """Keep only the first occurrence of each exact (query, positive) pair."""
        drop = set(self.duplicate_pair_rows())
        if not drop:
            return self
        return self.subset([i for i in range(len(self)) if i not in drop])

    def to_records(self) -> list[dict[str, Any]]:
        """Rows as plain dicts (the ``__getitem__`` layout)."""
        return [self[i] for i in range(len(self))]

    def to_hf(self, num_negatives: int | None = None, extra_columns: bool = False):
        """Convert to a ``datasets.Dataset`` with columns ``query, positive[, negative_1, ...]``.

        That is the column layout sentence-transformers losses take (anchor, positive, negatives); a column of
        images becomes a ``datasets.Image`` feature (files referenced, decoded on access). ids and
        sources are left out by default because a sentence-transformers trainer feeds every column to the
        loss; pass ``extra_columns=True`` to append ``id`` (and ``source``).

        Args:
            num_negatives: how many negative columns to emit. ``None`` = the smallest number any row has
                (a warning says when longer rows are cut); a larger value than some row has is an error.
            extra_columns: also emit ``id`` and ``source`` columns.

        Example:
            >>> PairDataset(["q one"], ["p one"], [["n1", "n2"]]).to_hf().column_names
            ['query', 'positive', 'negative_1', 'negative_2']
        """
        datasets = require("datasets", "hf", "PairDataset.to_hf()")
        columns: dict[str, list[Any]] = {"query": self.queries, "positive": self.positives}
        if self.negatives is not None:
            counts = [len(row) for row in self.negatives]
            smallest = min(counts)
            k = smallest if num_negatives is None else int(num_negatives)
            if k > smallest:
                row = counts.index(smallest)
                raise DataError(
                    f"{self.name}: row {row}: field 'negatives' has {smallest} entries, "
                    f"fewer than num_negatives={k}"
                )
            if num_negatives is None and max(counts) > k:
                warnings.warn(
                    f"{self.name}: rows have between {smallest} and {max(counts)} negatives; "
                    f"keeping the first {k} per row (pass num_negatives to choose)",
                    stacklevel=2,
                )
            for j in range(k):
                columns[f"negative_{j + 1}"] = [row[j] for row in self.negatives]
        if extra_columns:
            columns["id"] = self.ids
            if self.sources is not None:
                columns["source"] = self.sources
        image_columns = [name for name, values in columns.items() if any(type(v) is ImageRef for v in values)]
        if not image_columns:
            return datasets.Dataset.from_dict(columns)
        # Image columns become datasets.Image features, undecoded until a row is read.
        features = {}
        for name in image_columns:
            values = columns[name]
            if not all(type(v) is ImageRef for v in values):
                raise DataError(
                    f"{self.name}: column '{name}' mixes texts and images; a datasets column has one type"
                )
            columns[name] = [_image_feature(v) for v in values]
            features[name] = datasets.Image()
        table = datasets.Dataset.from_dict(columns)
        for name, feature in features.items():
            table = table.cast_column(name, feature)
        return table

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> Path:
        """Write the dataset atomically; the format follows the extension.

        ``.parquet`` (with hardbatch metadata: name, fingerprint and ``metadata``), ``.jsonl``, ``.json``
        (a JSON array) or ``.csv``/``.tsv`` (negatives as a JSON array in one cell). Each format loads back
        with :func:`hardbatch.data.load_pairs` to an equal dataset (same fingerprint).

        Returns:
            The path written.
        """
        target = Path(path)
        suffix = target.suffix.lower()
        if self.has_images and suffix not in (".jsonl", ".ndjson", ".json"):
            raise DataError(f"{target}: a dataset with images can be saved as .jsonl or .json only")
        if suffix in (".parquet", ".pq"):
            self._save_parquet(target, metadata or {})
        elif suffix in (".jsonl", ".ndjson"):
            with atomic_write(target) as handle:
                for record in self:
                    handle.write(json.dumps(record, ensure_ascii=False, default=_image_json) + "\n")
        elif suffix == ".json":
            with atomic_write(target) as handle:
                json.dump(self.to_records(), handle, ensure_ascii=False, indent=1, default=_image_json)
                handle.write("\n")
        elif suffix in (".csv", ".tsv"):
            self._save_csv(target, "\t" if suffix == ".tsv" else ",")
        else:
            raise DataError(
                f"{target}: unsupported extension {suffix!r}; use .parquet, .jsonl, .json, .csv or .tsv"
            )
        return target

    def _save_parquet(self, target: Path, metadata: dict[str, Any]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        arrays = {
            "query": pa.array(self.queries, pa.string()),
            "positive": pa.array(self.positives, pa.string()),
        }
        if self.negatives is not None:
            arrays["negatives"] = pa.array(self.negatives, pa.list_(pa.string()))
        arrays["id"] = pa.array(self.ids, pa.string())
        if self.sources is not None:
            arrays["source"] = pa.array(self.sources, pa.string())
        info = {
            "format": "hardbatch-pairs",
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "num_pairs": len(self),
            "fingerprint": self.fingerprint,
            **metadata,
        }
        table = pa.table(arrays).replace_schema_metadata({METADATA_KEY: json.dumps(info, sort_keys=True)})
        with atomic_path(target) as tmp:
            pq.write_table(table, tmp, compression="zstd")

    def _save_csv(self, target: Path, delimiter: str) -> None:
        import csv

        header = ["query", "positive"]
        if self.negatives is not None:
            header.append("negatives")
        header.append("id")
        if self.sources is not None:
            header.append("source")
        # newline="" so quoted cells keep their own line breaks byte for byte (csv module convention).
        with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, delimiter=delimiter, lineterminator="\n")
            writer.writerow(header)
            for record in self:
                writer.writerow(
                    [
                        json.dumps(record[col], ensure_ascii=False) if col == "negatives" else record[col]
                        for col in header
                    ]
                )


def _check_text(value: Any, where: str, field: str) -> None:
    """Raise a DataError naming ``where`` (file + line/row) and ``field`` unless value is non-empty text
    or an :class:`~hardbatch.data.images.ImageRef` (images are checked by the loaders)."""
    if type(value) is ImageRef:
        return
    if not isinstance(value, str):
        raise DataError(
            f"{where}: field '{field}' must be a string, got {type(value).__name__} {value!r:.60}"
        )
    if not value.strip():
        raise DataError(f"{where}: field '{field}' is empty")


def _image_json(value: Any) -> Any:
    """JSON for an image cell: ``{"image": "<absolute path>"}`` (what the loaders read back)."""
    if type(value) is ImageRef and value.path is not None:
        return {"image": str(value.path.resolve())}
    if type(value) is ImageRef:
        raise DataError(f"cannot save {value.describe()} as JSON; write the images to files first")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _image_feature(ref: ImageRef) -> dict[str, Any]:
    """``{"bytes", "path"}`` for a ``datasets.Image`` column (a file is referenced, not copied)."""
    if ref.path is not None:
        return {"bytes": None, "path": str(ref.path)}
    if ref.data is not None:
        return {"bytes": ref.data, "path": None}
    import io

    buffer = io.BytesIO()
    ref.image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}
