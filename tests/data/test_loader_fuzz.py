"""Fuzz the pair loaders: arbitrary bytes, JSON and CSV either load or raise a HardbatchError, nothing else.

A loader that lets a ``KeyError``, ``TypeError``, ``UnicodeDecodeError``, ``RecursionError`` or a
pyarrow exception escape would print a traceback instead of a one-line message; these properties catch
exactly that.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardbatch.data import load_pairs
from hardbatch.errors import HardbatchError

_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_EXTENSIONS = (".jsonl", ".json", ".csv", ".tsv", ".parquet")

_json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
_json_values = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_keys = st.sampled_from(["query", "positive", "negative", "negatives", "id", "source", "anchor", "text", "x"])
_rows = st.dictionaries(_keys, _json_values, max_size=5)


def _load(name: str, payload: bytes):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(payload)
        try:
            dataset = load_pairs(str(path))
        except HardbatchError as error:
            assert str(error) and "\n" not in str(error).strip(), repr(str(error))
            return None
        assert len(dataset) > 0
        assert all(isinstance(q, str) for q in dataset.queries)
        assert len(dataset.fingerprint) == 64  # what was loaded is usable downstream (hashing encodes it)
        return dataset


@_SETTINGS
@given(payload=st.binary(max_size=300), extension=st.sampled_from(_EXTENSIONS))
def test_arbitrary_bytes_load_or_raise_a_hardbatch_error(payload, extension):
    _load(f"data{extension}", payload)


@_SETTINGS
@given(value=_json_values | st.lists(_rows, max_size=4))
def test_arbitrary_json_loads_or_raises_a_hardbatch_error(value):
    _load("data.json", json.dumps(value).encode())


@_SETTINGS
@given(
    rows=st.lists(_rows | _json_values, max_size=5), junk=st.sampled_from(["", "{", "\n\n", "[1]", "\x00"])
)
def test_arbitrary_jsonl_loads_or_raises_a_hardbatch_error(rows, junk):
    _load(
        "data.jsonl", ("\n".join(json.dumps(r) for r in rows) + "\n" + junk).encode("utf-8", "surrogatepass")
    )


@_SETTINGS
@given(
    header=st.lists(_keys | st.text(max_size=6), min_size=0, max_size=4),
    cells=st.lists(st.lists(st.text(max_size=10), max_size=5), max_size=5),
    delimiter=st.sampled_from([",", "\t"]),
)
def test_arbitrary_csv_loads_or_raises_a_hardbatch_error(header, cells, delimiter):
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter)
    writer.writerow(header)
    writer.writerows(cells)
    _load("data.csv" if delimiter == "," else "data.tsv", buffer.getvalue().encode("utf-8", "surrogatepass"))


def test_deep_nesting_and_lone_surrogates_are_data_errors(tmp_path):
    import pytest

    from hardbatch.errors import DataError

    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match=r"deep\.json: JSON nested too deeply"):
        load_pairs(str(deep))
    deep_lines = tmp_path / "deep.jsonl"
    deep_lines.write_text('{"query": "q", "positive": "p"}\n' + "[" * 100_000 + "\n")
    with pytest.raises(DataError, match=r"deep\.jsonl: line 2: JSON nested too deeply"):
        load_pairs(str(deep_lines))
    surrogate = tmp_path / "surrogate.jsonl"
    surrogate.write_text('{"query": "ok", "positive": "p"}\n{"query": "a\\ud800", "positive": "p"}\n')
    with pytest.raises(
        DataError, match=r"surrogate\.jsonl: line 2: field 'query' holds a lone surrogate \\ud800"
    ):
        load_pairs(str(surrogate))
