"""Read pair datasets from JSONL, JSON, CSV/TSV, Parquet, Hugging Face datasets or in-memory records.

Every reader turns its input into named raw columns plus a function that names the location of row ``i``
(``"data.jsonl: line 7"``, ``"data.csv: line 4"``, ``"data.parquet: row 3"``); one shared validator then
maps column names, checks every cell and builds a :class:`PairDataset`. So every error names the file, the
line or row, and the field, whatever the format.

Columns (after ``column_map``): ``query`` and ``positive`` (required, non-empty strings), ``negatives``
(optional list of non-empty strings; in CSV a JSON array in one cell; alternatively separate columns
``negative``/``negative_1``/``negative_2``... as written by :meth:`PairDataset.to_hf`), ``id`` (optional,
unique; ``"row-<i>"`` by file order when absent) and ``source`` (optional group label). Other columns are
ignored.

Cost: O(file size) time and memory; a single pass over the rows for validation.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardbatch.data.images import (
    ImageRef,
    as_image,
    check_image,
    is_image_value,
    looks_like_image_path,
)
from hardbatch.data.pairs import PairDataset
from hardbatch.errors import ConfigError, DataError

__all__ = ["CANONICAL_COLUMNS", "SUPPORTED_EXTENSIONS", "ImageOptions", "load_pairs", "read_table"]

CANONICAL_COLUMNS = ("query", "positive", "negatives", "id", "source")
SUPPORTED_EXTENSIONS = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".pq")
_NEGATIVE_COLUMN = re.compile(r"^negative(?:_(\d+))?$")


class _Missing:
    """Marks a key absent from one JSON record (different from an explicit null)."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING = _Missing()


@dataclass
class RawTable:
    """Columns as read from one input, before mapping and validation.

    ``locate(i)`` names row ``i`` within the input (``"line 7"``, ``"row 3"``); ``text_cells`` is true for CSV, whose cells are all strings
    (so ``negatives`` is JSON-decoded from text).
    """

    name: str
    column_names: list[str]
    get: Callable[[str], list[Any]]
    num_rows: int
    locate: Callable[[int], str]
    text_cells: bool = False
    dataset_name: str = "pairs"
    base_dir: Path | None = None  # folder relative image paths are resolved against (the data file's)


# ---------------------------------------------------------------------------------------------- readers
def _check_data_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a data file")


def _read_text(path: Path) -> str:
    _check_data_file(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not valid UTF-8 text ({exc.reason})") from exc


def _records_table(name: str, records: list[Any], locations: list[str], dataset_name: str) -> RawTable:
    names: dict[str, None] = {}
    for record, where in zip(records, locations):
        if not isinstance(record, Mapping):
            raise DataError(
                f"{name}: {where}: expected a JSON object with fields, got {type(record).__name__}"
            )
        names.update(dict.fromkeys(record))

    def get(column: str) -> list[Any]:
        return [record.get(column, MISSING) for record in records]

    return RawTable(name, list(names), get, len(records), locations.__getitem__, False, dataset_name)


# JSON may spell a UTF-16 surrogate as an escape; alone (not in a high+low pair) it decodes to a str that
# cannot be encoded as UTF-8, so hashing or saving the text would fail far from the file. Only lines with
# such an escape are checked, so normal files pay nothing.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _check_unicode(value: Any, where: str, field: str | None = None) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            code = ord(value[exc.start])
            named = f"field '{field}'" if field is not None else "a value"
            raise DataError(
                f"{where}: {named} holds a lone surrogate \\u{code:04x}, which is not valid Unicode text"
            ) from exc
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_unicode(key, where, field)
            _check_unicode(item, where, key if field is None else field)
    elif isinstance(value, list):
        for item in value:
            _check_unicode(item, where, field)


def _read_jsonl(path: Path) -> RawTable:
    text = _read_text(path)
    records, locations = [], []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{path}: line {number}: invalid JSON ({exc})") from exc
        except RecursionError as exc:
            raise DataError(f"{path}: line {number}: JSON nested too deeply") from exc
        if _SURROGATE_ESCAPE.search(line):
            _check_unicode(record, f"{path}: line {number}")
        records.append(record)
        locations.append(f"line {number}")
    return _with_base(_records_table(str(path), records, locations, path.stem), path)


def _with_base(table: RawTable, path: Path) -> RawTable:
    table.base_dir = path.resolve().parent
    return table


def _read_json(path: Path) -> RawTable:
    text = _read_text(path)
    if not text.lstrip().startswith("["):
        return _read_jsonl(path)  # many tools (incl. datasets.to_json) write JSON lines to *.json
    try:
        records = json.loads(text)
    except ValueError as exc:
        line = getattr(exc, "lineno", "?")
        raise DataError(f"{path}: line {line}: invalid JSON ({getattr(exc, 'msg', exc)})") from exc
    except RecursionError as exc:
        raise DataError(f"{path}: JSON nested too deeply") from exc
    if _SURROGATE_ESCAPE.search(text) and isinstance(records, list):
        for i, record in enumerate(records):
            _check_unicode(record, f"{path}: record {i}")
    return _with_base(
        _records_table(str(path), records, [f"record {i}" for i in range(len(records))], path.stem), path
    )


def _read_csv(path: Path, delimiter: str) -> RawTable:
    text = _read_text(path)
    # Code snippets exceed csv's default 128 KiB cell limit; raising the (process-wide) limit is harmless.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows: list[list[str]] = []
    lines: list[int] = []
    header: list[str] | None = None
    try:
        previous_line = 0
        for row in reader:
            start, previous_line = previous_line + 1, reader.line_num  # a quoted cell may span lines
            if not row or (len(row) == 1 and not row[0].strip() and header is not None):
                continue
            if header is None:
                header = [cell.strip() for cell in row]
                duplicated = sorted({c for c in header if header.count(c) > 1})
                if duplicated:
                    raise DataError(f"{path}: line {start}: header repeats column(s) {', '.join(duplicated)}")
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{path}: line {start}: has {len(row)} fields but the header has {len(header)}"
                )
            rows.append(row)
            lines.append(start)
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from exc
    if header is None:
        raise DataError(f"{path}: empty file (no header, no rows)")
    index = {name: k for k, name in enumerate(header)}

    def get(column: str) -> list[Any]:
        k = index[column]
        return [row[k] for row in rows]

    table = RawTable(str(path), header, get, len(rows), lambda i: f"line {lines[i]}", True, path.stem)
    return _with_base(table, path)


def _read_parquet(path: Path) -> RawTable:
    import pyarrow.parquet as pq

    _check_data_file(path)
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read parquet file ({exc})") from exc
    name = path.stem
    raw_meta = (table.schema.metadata or {}).get(b"hardbatch")
    if raw_meta:
        with contextlib.suppress(ValueError):  # foreign metadata: keep the file name
            name = json.loads(raw_meta).get("name", name)
    return RawTable(
        str(path),
        list(table.column_names),
        lambda column: table.column(column).to_pylist(),
        table.num_rows,
        lambda i: f"row {i}",
        False,
        name,
        path.resolve().parent,
    )


def _is_hf_dataset(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] == "datasets" and hasattr(obj, "column_names")


def _read_hf(dataset: Any) -> RawTable:
    kind = type(dataset).__name__
    if kind in ("DatasetDict", "IterableDatasetDict"):
        raise DataError(f"Hugging Face {kind} with splits {list(dataset)}: pass one split, e.g. ds['train']")
    if kind != "Dataset":
        raise DataError(f"Hugging Face {kind} is not supported; pass a map-style datasets.Dataset")
    info_name = getattr(getattr(dataset, "info", None), "dataset_name", None) or "hf-dataset"
    label = f"Hugging Face dataset {info_name!r}"
    plain = _undecoded_images(dataset.with_format(None))

    def get(column: str) -> list[Any]:
        # Only the columns we use are materialised; slicing honours select()/shuffle() indices.
        return list(plain.select_columns([column])[:][column])

    return RawTable(
        label,
        list(dataset.column_names),
        get,
        len(dataset),
        lambda i: f"row {i}",
        False,
        info_name,
    )


def _undecoded_images(dataset: Any) -> Any:
    """Cast ``Image`` feature columns to ``decode=False``: rows then hold ``{"bytes", "path"}`` dicts and
    no image is decoded before a batch needs it (decoding the column would hold every image in memory)."""
    features = getattr(dataset, "features", None) or {}
    for column, feature in features.items():
        if type(feature).__name__ == "Image" and getattr(feature, "decode", False):
            dataset = dataset.cast_column(column, type(feature)(decode=False))
    return dataset


def read_table(spec: Any) -> RawTable:
    """Read a path / HF dataset / list of records / dict of columns into a :class:`RawTable`."""
    if _is_hf_dataset(spec):
        return _read_hf(spec)
    if isinstance(spec, Mapping):
        lengths = {key: len(value) for key, value in spec.items()}
        if len(set(lengths.values())) > 1:
            raise DataError(f"columns dict: columns have different lengths {lengths}")
        n = next(iter(lengths.values()), 0)
        return RawTable(
            "columns dict",
            list(spec),
            lambda c: list(spec[c]),
            n,
            lambda i: f"row {i}",
            False,
            "pairs",
        )
    if isinstance(spec, Sequence) and not isinstance(spec, str | bytes):
        return _records_table("records", list(spec), [f"record {i}" for i in range(len(spec))], "pairs")
    if not isinstance(spec, str | os.PathLike):
        raise ConfigError(
            f"cannot load pairs from {type(spec).__name__}; pass a file path, a datasets.Dataset, "
            "a list of dicts or 'codesearch:train|dev|test'"
        )
    path = Path(spec).expanduser()
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, "\t" if suffix == ".tsv" else ",")
    if suffix in (".parquet", ".pq"):
        return _read_parquet(path)
    raise DataError(
        f"{path}: unsupported file type {suffix or '(no extension)'!r}; use {', '.join(SUPPORTED_EXTENSIONS)}"
    )


# ---------------------------------------------------------------------------------------------- mapping
def _resolve_columns(table: RawTable, column_map: Mapping[str, str] | None) -> dict[str, list[str]]:
    """canonical name -> source column(s); ``negatives`` may gather several columns."""
    present = set(table.column_names)
    resolved: dict[str, list[str]] = {}
    mapped_sources: set[str] = set()
    if column_map:
        if not isinstance(column_map, Mapping):
            raise ConfigError(
                f"column_map must be a dict {{file column: canonical name}}, got {type(column_map).__name__}"
            )
        for source, target in column_map.items():
            if target not in CANONICAL_COLUMNS:
                hint = ""
                if source in CANONICAL_COLUMNS:
                    hint = f" (did you mean {{{target!r}: {source!r}}}? keys are file columns)"
                raise ConfigError(
                    f"column_map: {source!r} -> {target!r}: target must be one of {', '.join(CANONICAL_COLUMNS)}{hint}"
                )
            if source not in present:
                raise DataError(
                    f"{table.name}: column_map names column {source!r}, which is not in the data "
                    f"(columns: {', '.join(table.column_names) or 'none'})"
                )
            if target in resolved and target != "negatives":
                raise ConfigError(
                    f"column_map maps both {resolved[target][0]!r} and {source!r} to {target!r}"
                )
            resolved.setdefault(target, []).append(source)
            mapped_sources.add(source)
    for name in CANONICAL_COLUMNS:
        if name not in resolved and name in present and name not in mapped_sources:
            resolved[name] = [name]
    if "negatives" not in resolved:
        numbered = []
        for column in table.column_names:
            match = _NEGATIVE_COLUMN.match(column)
            if match and column not in mapped_sources:
                numbered.append((int(match.group(1) or 0), column))
        if numbered:
            resolved["negatives"] = [column for _, column in sorted(numbered)]
    for required in ("query", "positive"):
        if required not in resolved:
            raise DataError(
                f"{table.name}: missing column '{required}' (columns: {_shown_names(table.column_names)}); "
                "rename it or pass column_map={'<your column>': '" + required + "'}"
            )
    return resolved


def _shown_names(names: list[Any]) -> str:
    """Column names for a one-line message (a name with a newline or other control character is quoted)."""
    shown = [n if isinstance(n, str) and n.isprintable() else repr(n) for n in names]
    return ", ".join(shown) or "none"


# ---------------------------------------------------------------------------------------------- validation
def _text(value: Any, where: str, field: str) -> str:
    if value is MISSING:
        raise DataError(f"{where}: missing field '{field}'")
    if not isinstance(value, str):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise DataError(
            f"{where}: field '{field}' must be a non-empty string, got {type(value).__name__} {shown}"
        )
    if not value or value.isspace():
        raise DataError(f"{where}: field '{field}' is empty")
    return value


def _is_text(value: Any) -> bool:
    # isspace() stops at the first non-space character, so this is O(1) for normal text (strip() copies).
    return type(value) is str and bool(value) and not value.isspace()


def _text_column(table: RawTable, column: str, allow_int: bool = False) -> list[str]:
    """Validate a text column; the location string is only built for the row that fails."""
    values = table.get(column)
    for i, value in enumerate(values):
        if type(value) is not str or not value or value.isspace():  # _is_text, inlined: hot loop
            if allow_int and isinstance(value, int) and not isinstance(value, bool):
                values[i] = str(value)
            else:
                values[i] = _text(value, f"{table.name}: {table.locate(i)}", column)
    return values


def _negatives_from_list(value: Any, where: str, field: str, text_cells: bool) -> list[str]:
    if value is MISSING or value is None:
        return []
    if text_cells and isinstance(value, str):
        if not value or value.isspace():
            return []
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise DataError(
                f"{where}: field '{field}' must be a JSON array of strings, got {value[:40]!r}"
            ) from exc
        if not isinstance(value, list):
            raise DataError(
                f"{where}: field '{field}' must be a JSON array of strings, got {type(value).__name__}"
            )
    if type(value) is list and all(map(_is_text, value)):
        return value
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise DataError(f"{where}: field '{field}' must be a list of strings, got {type(value).__name__}")
    return [
        item if is_image_value(item) else _text(item, where, f"{field}[{k}]") for k, item in enumerate(value)
    ]


def _negatives_column(table: RawTable, column: str) -> list[list[str]]:
    values = table.get(column)
    out: list[list[str]] = []
    for i, value in enumerate(values):
        decoded = value
        if table.text_cells and _is_text(value):
            with contextlib.suppress(ValueError):  # the slow path below reports undecodable cells
                decoded = json.loads(value)
        if type(decoded) is list and all(map(_is_text, decoded)):
            out.append(decoded)
        else:
            out.append(
                _negatives_from_list(value, f"{table.name}: {table.locate(i)}", column, table.text_cells)
            )
    return out


def _build(
    table: RawTable,
    column_map: Mapping[str, str] | None,
    drop_duplicates: bool,
    images: ImageOptions | None = None,
) -> PairDataset:
    if table.num_rows == 0:
        raise DataError(f"{table.name}: empty dataset (no rows)")
    images = images or ImageOptions()
    resolved = _resolve_columns(table, column_map)
    queries = _value_column(table, resolved["query"][0], "query", images)
    positives = _value_column(table, resolved["positive"][0], "positive", images)

    negatives: list[list[str]] | None = None
    if "negatives" in resolved:
        sources = resolved["negatives"]
        # One column that is not negative/negative_<k> holds a list per row (a JSON array in CSV);
        # otherwise each column holds one negative per row.
        if len(sources) == 1 and not _NEGATIVE_COLUMN.match(sources[0]):
            negatives = _negatives_column(table, sources[0])
        else:
            negatives = _negatives_from_columns(table, sources)
        negatives = _image_negatives(table, negatives, sources, images)

    ids = _text_column(table, resolved["id"][0], allow_int=True) if "id" in resolved else None
    source_labels = (
        _text_column(table, resolved["source"][0], allow_int=True) if "source" in resolved else None
    )

    keep = list(range(table.num_rows))
    if drop_duplicates:
        seen: set[tuple[str, str]] = set()
        keep = []
        for i, key in enumerate(zip(queries, positives)):
            if key not in seen:
                seen.add(key)
                keep.append(i)
    if ids is None:
        ids = [f"row-{i}" for i in range(table.num_rows)]  # by original row, so ids survive dropping
    else:
        first_seen: dict[str, int] = {}
        for i in keep:
            if ids[i] in first_seen:
                raise DataError(
                    f"{table.name}: {table.locate(i)}: field '{resolved['id'][0]}': duplicate id {ids[i]!r} "
                    f"(first seen at {table.locate(first_seen[ids[i]])})"
                )
            first_seen[ids[i]] = i

    def pick(column: list[Any] | None) -> list[Any] | None:
        if column is None or len(keep) == table.num_rows:
            return column
        return [column[i] for i in keep]

    return PairDataset(
        pick(queries),
        pick(positives),
        pick(negatives),
        pick(ids),
        pick(source_labels),
        name=table.dataset_name,
        validate=False,
    )


def _negatives_from_columns(table: RawTable, columns: list[str]) -> list[list[str]]:
    """Gather negatives spread over several columns (negative_1, negative_2, ...); empty cells are skipped."""
    gathered: list[list[str]] = [[] for _ in range(table.num_rows)]
    for column in columns:
        for i, value in enumerate(table.get(column)):
            if value is MISSING or value is None or (table.text_cells and value == ""):
                continue
            if isinstance(value, list | tuple) and not table.text_cells:
                where = f"{table.name}: {table.locate(i)}"
                gathered[i].extend(_negatives_from_list(value, where, column, False))
            elif _is_text(value) or is_image_value(value):
                gathered[i].append(value)
            else:
                gathered[i].append(_text(value, f"{table.name}: {table.locate(i)}", column))
    return gathered


# ---------------------------------------------------------------------------------------------- entry point
def load_pairs(
    spec: Any,
    *,
    column_map: Mapping[str, str] | None = None,
    drop_duplicates: bool = False,
    image_columns: str | Sequence[str] = "auto",
    check_images: str = "full",
) -> PairDataset:
    """Load and validate a pair dataset.

    Args:
        spec: a path (``.jsonl``/``.ndjson``, ``.json``, ``.csv``/``.tsv``, ``.parquet``), a Hugging Face
            ``datasets.Dataset``, a list of dicts, a dict of columns, a :class:`PairDataset`, or
            ``"codesearch:train|dev|test"`` (the built-in corpus, built into
            :func:`hardbatch.data.default_cache_dir` on first use and rebuilt when stale; options as in
            ``"codesearch:train?packages=json,email&max_pairs=500"``, see
            :func:`hardbatch.data.cache.parse_codesearch_spec`).
        column_map: ``{column in the data: canonical name}``, canonical names being ``query``, ``positive``,
            ``negatives``, ``id``, ``source`` (several columns may map to ``negatives``).
        drop_duplicates: drop rows whose exact (query, positive) pair occurred earlier (first one kept).
        image_columns: canonical columns whose string cells are image paths (relative to the data file's
            folder), or ``"auto"`` (a column whose every cell looks like an image path); image values that
            are not strings (bytes, PIL images, Hugging Face ``Image`` features, ``{"image": path}``) are
            recognised in any column. See :class:`ImageOptions` and :mod:`hardbatch.data.images`.
        check_images: ``"full"`` (decode each image once to catch unreadable/truncated files, one at a
            time), ``"exists"`` or ``"none"``.

    Returns:
        A validated :class:`PairDataset`.

    Raises:
        DataError: naming the file, the line (JSONL/CSV) or row (Parquet/HF), and the field, for a missing
            column, an empty or non-string text, a malformed ``negatives``, a duplicate id, an unreadable
            file, a missing, empty, unreadable or truncated image, or an empty dataset.

    Example:
        >>> ds = load_pairs([{"question": "how to sort a list", "answer": "sorted(xs)"}],
        ...                 column_map={"question": "query", "answer": "positive"})
        >>> ds[0]
        {'query': 'how to sort a list', 'positive': 'sorted(xs)', 'id': 'row-0'}
    """
    if isinstance(spec, PairDataset):
        return spec.drop_duplicates() if drop_duplicates else spec
    if isinstance(spec, str) and spec.split(":", 1)[0].split("?", 1)[0] == "codesearch":
        from hardbatch.data.cache import load_codesearch, parse_codesearch_spec

        if column_map:
            raise ConfigError("column_map does not apply to the built-in codesearch dataset")
        split, config = parse_codesearch_spec(spec)
        dataset = load_codesearch(split, config)
        return dataset.drop_duplicates() if drop_duplicates else dataset
    if isinstance(spec, str) and spec.split(":", 1)[0] == "emoji":
        from hardbatch.data.emoji import load_emoji, parse_emoji_spec

        if column_map:
            raise ConfigError("column_map does not apply to the built-in emoji dataset")
        split, config = parse_emoji_spec(spec)
        dataset = load_emoji(split, config)
        return dataset.drop_duplicates() if drop_duplicates else dataset
    images = ImageOptions(image_columns, check_images)
    return _build(read_table(spec), column_map, drop_duplicates, images)


# ---------------------------------------------------------------------------------------------- images
@dataclass(frozen=True)
class ImageOptions:
    """How :func:`load_pairs` recognises and checks images (see :mod:`hardbatch.data.images`).

    Attributes:
        columns: canonical columns (``query``, ``positive``, ``negatives``) whose string cells are image
            paths, or ``"auto"``: a column is a path column when every string cell in it looks like an
            image path (one token ending in ``.png``, ``.jpg``, ...). Non-string image values (bytes, PIL
            images, ``{"bytes", "path"}`` and ``{"image": ...}`` dicts) are images in any column.
        check: ``"full"`` decodes each image once, one at a time, to catch unreadable and truncated files
            (O(N) decoding time, O(1 image) memory); ``"exists"`` only checks files exist and are
            non-empty; ``"none"`` checks nothing (a bad image then fails when its batch is built, naming
            the row and field).
    """

    columns: str | tuple[str, ...] = "auto"
    check: str = "full"

    def __post_init__(self) -> None:
        if self.check not in ("full", "exists", "none"):
            raise ConfigError(f"check_images must be 'full', 'exists' or 'none', got {self.check!r}")
        if self.columns != "auto":
            columns = (self.columns,) if isinstance(self.columns, str) else tuple(self.columns)
            for column in columns:
                if column not in ("query", "positive", "negatives"):
                    raise ConfigError(f"image_columns: {column!r} is not one of query, positive, negatives")
            object.__setattr__(self, "columns", columns)

    def path_column(self, canonical: str, strings: list[str]) -> bool:
        if self.columns != "auto":
            return canonical in self.columns
        return (
            bool(strings) and looks_like_image_path(strings[0]) and all(map(looks_like_image_path, strings))
        )


def _image_cell(
    table: RawTable, row: int, field: str, value: Any, options: ImageOptions, path_ok: bool
) -> ImageRef:
    where = f"{table.name}: {table.locate(row)}"
    try:
        ref = as_image(value, table.base_dir, path_ok=path_ok)
    except TypeError:
        raise DataError(
            f"{where}: field '{field}' must be a non-empty string or an image, got {type(value).__name__}"
        ) from None
    if options.check != "none":
        check_image(ref, where, field, full=options.check == "full")
    return ref


def _value_column(table: RawTable, column: str, canonical: str, options: ImageOptions) -> list[Any]:
    """A query/positive column: texts stay strings, image values become :class:`ImageRef`."""
    values = table.get(column)
    strings = [v for v in values if type(v) is str]
    if options.path_column(canonical, strings):
        for i, value in enumerate(values):
            if isinstance(value, str) and (not value or value.isspace()):
                _text(value, f"{table.name}: {table.locate(i)}", column)  # names the empty cell
            values[i] = _image_cell(table, i, column, value, options, isinstance(value, str))
        return values
    if len(strings) == len(values):
        for i, value in enumerate(values):
            if not value or value.isspace():
                _text(value, f"{table.name}: {table.locate(i)}", column)
        return values
    for i, value in enumerate(values):
        if is_image_value(value):
            values[i] = _image_cell(table, i, column, value, options, False)
        elif type(value) is not str or not value or value.isspace():
            values[i] = _text(value, f"{table.name}: {table.locate(i)}", column)
    return values


def _image_negatives(
    table: RawTable, negatives: list[list[Any]], sources: list[str], options: ImageOptions
) -> list[list[Any]]:
    """Turn image values among the negatives into :class:`ImageRef` (paths: see :class:`ImageOptions`)."""
    strings = [v for row in negatives for v in row if type(v) is str]
    path_ok = options.path_column("negatives", strings)
    if not path_ok and len(strings) == sum(map(len, negatives)):
        return negatives
    field = sources[0] if len(sources) == 1 else "negatives"
    for i, row in enumerate(negatives):
        for k, value in enumerate(row):
            if path_ok or not isinstance(value, str):
                row[k] = _image_cell(table, i, f"{field}[{k}]", value, options, path_ok)
    return negatives
