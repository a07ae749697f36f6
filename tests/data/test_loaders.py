from __future__ import annotations

import json
from pathlib import Path

import pytest

from hardbatch.data import PairDataset, load_pairs
from hardbatch.errors import ConfigError, DataError

FORMATS = [".jsonl", ".json", ".csv", ".tsv", ".parquet"]


def _rich_dataset() -> PairDataset:
    # Text that stresses every format: commas, tabs, quotes, newlines, unicode, JSON-looking strings.
    return PairDataset(
        ['how to "quote", a value', "multi\nline query", "ünïcödé ✓ query", "[not, a list]"],
        ["def f(a, b):\n    return a\tb", "p, with comma", 'p "q"', "positive"],
        [["neg 1", "neg, 2"], [], ["only one\nwith newline"], ["x", "y", "z"]],
        ["id-1", "id-2", "id-3", "id-4"],
        ["src a", "src a", "src b", "src c"],
        name="rich",
    )


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("suffix", FORMATS)
def test_round_trip_all_columns(tmp_path, suffix):
    original = _rich_dataset()
    path = original.save(tmp_path / f"pairs{suffix}")
    loaded = load_pairs(path)
    assert loaded.fingerprint == original.fingerprint
    assert loaded.negatives == original.negatives
    assert loaded[1] == original[1]


@pytest.mark.parametrize("suffix", FORMATS)
def test_round_trip_minimal_columns(tmp_path, suffix):
    original = PairDataset(["q one", "q two"], ["p one", "p two"], name="mini")
    loaded = load_pairs(original.save(tmp_path / f"mini{suffix}"))
    assert loaded.fingerprint == original.fingerprint
    assert loaded.negatives is None and loaded.sources is None
    assert loaded.ids == ["row-0", "row-1"]


def test_parquet_keeps_name_and_metadata(tmp_path):
    import pyarrow.parquet as pq

    path = _rich_dataset().save(tmp_path / "x.parquet", metadata={"note": "hello"})
    meta = json.loads(pq.read_schema(path).metadata[b"hardbatch"])
    assert meta["note"] == "hello" and meta["fingerprint"] == _rich_dataset().fingerprint
    assert load_pairs(path).name == "rich"


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "out.jsonl"
    path.write_text("previous\n")
    ds = _rich_dataset()
    monkeypatch.setattr(PairDataset, "__iter__", lambda self: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        ds.save(path)
    assert path.read_text() == "previous\n"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


# ---------------------------------------------------------------------------------------------- HF datasets
def test_hf_dataset_input_and_to_hf_round_trip():
    datasets = pytest.importorskip("datasets")
    hf = datasets.Dataset.from_dict(
        {
            "query": ["q a", "q b", "q c"],
            "positive": ["p a", "p b", "p c"],
            "negative_1": ["n a1", "n b1", "n c1"],
            "negative_2": ["n a2", "n b2", "n c2"],
            "label": [1, 2, 3],  # ignored
        }
    )
    ds = load_pairs(hf)
    assert ds.negatives == [["n a1", "n a2"], ["n b1", "n b2"], ["n c1", "n c2"]]
    assert ds.ids == ["row-0", "row-1", "row-2"]
    # select()/shuffle() indices and torch formatting are honoured
    picked = load_pairs(hf.select([2, 0]).with_format("torch"))
    assert picked.queries == ["q c", "q a"]
    again = load_pairs(ds.to_hf())
    assert again.fingerprint == ds.fingerprint


def test_hf_dataset_errors_name_row_and_field():
    datasets = pytest.importorskip("datasets")
    hf = datasets.Dataset.from_dict(
        {"q": ["a b", ""], "p": ["x", "y"]}, info=datasets.DatasetInfo(dataset_name="mine")
    )
    with pytest.raises(DataError) as info:
        load_pairs(hf, column_map={"q": "query", "p": "positive"})
    assert "Hugging Face dataset 'mine': row 1: field 'q' is empty" in str(info.value)
    with pytest.raises(DataError, match="pass one split"):
        load_pairs(datasets.DatasetDict({"train": hf}))


# ---------------------------------------------------------------------------------------------- mapping
def test_column_map_and_records(tmp_path):
    path = _write_jsonl(
        tmp_path / "qa.jsonl",
        [
            {"question": "what is x", "answer": "x is y", "hard": ["no"], "key": 7, "topic": "t"},
            {"question": "what is z", "answer": "z is w", "hard": ["nope"], "key": 8, "topic": "t"},
        ],
    )
    mapping = {"question": "query", "answer": "positive", "hard": "negatives", "key": "id", "topic": "source"}
    ds = load_pairs(path, column_map=mapping)
    assert ds[0] == {
        "query": "what is x",
        "positive": "x is y",
        "negatives": ["no"],
        "id": "7",
        "source": "t",
    }
    assert ds.name == "qa"
    # several columns may feed negatives
    both = load_pairs(
        [{"q": "a b", "p": "c", "n1": "d", "n2": "e"}],
        column_map={"q": "query", "p": "positive", "n1": "negatives", "n2": "negatives"},
    )
    assert both.negatives == [["d", "e"]]


def test_column_map_errors(tmp_path):
    path = _write_jsonl(tmp_path / "qa.jsonl", [{"question": "a b", "answer": "c"}])
    with pytest.raises(ConfigError, match=r"did you mean \{'question': 'query'\}"):
        load_pairs(path, column_map={"query": "question"})
    with pytest.raises(
        DataError, match=r"qa\.jsonl: column_map names column 'quest', which is not in the data"
    ):
        load_pairs(path, column_map={"quest": "query", "answer": "positive"})
    with pytest.raises(DataError) as info:
        load_pairs(path)
    message = str(info.value)
    assert "qa.jsonl: missing column 'query'" in message and "columns: question, answer" in message


# ---------------------------------------------------------------------------------------------- errors
GOOD = {"query": "good query", "positive": "good positive"}


@pytest.mark.parametrize(
    ("bad_row", "expected"),
    [
        ({"query": "", "positive": "p"}, "line 3: field 'query' is empty"),
        ({"query": "   ", "positive": "p"}, "line 3: field 'query' is empty"),
        ({"query": 12, "positive": "p"}, "line 3: field 'query' must be a non-empty string, got int 12"),
        ({"query": "q"}, "line 3: missing field 'positive'"),
        (
            {"query": "q", "positive": None},
            "line 3: field 'positive' must be a non-empty string, got NoneType",
        ),
        (
            {"query": "q", "positive": "p", "negatives": "oops"},
            "line 3: field 'negatives' must be a list of strings, got str",
        ),
        (
            {"query": "q", "positive": "p", "negatives": ["ok", 3]},
            "line 3: field 'negatives[1]' must be a non-empty string",
        ),
        (
            {"query": "q", "positive": "p", "negatives": {"a": 1}},
            "line 3: field 'negatives' must be a list of strings, got dict",
        ),
        ({"query": "q", "positive": "p", "source": ""}, "line 3: field 'source' is empty"),
        (
            {"query": "q", "positive": "p", "id": 1.5},
            "line 3: field 'id' must be a non-empty string, got float",
        ),
    ],
)
def test_jsonl_errors_name_file_line_field(tmp_path, bad_row, expected):
    path = tmp_path / "bad.jsonl"
    # blank line 2 must still count: the bad record is on line 3
    valid_optional = {"source": "s", "id": "good", "negatives": []}
    good = {**GOOD, **{key: value for key, value in valid_optional.items() if key in bad_row}}
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad_row) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_pairs(path)
    assert str(info.value).startswith(f"{path}: {expected}")


def test_duplicate_ids_name_both_lines(tmp_path):
    rows = [
        {**GOOD, "id": "a"},
        {"query": "q2", "positive": "p2", "id": "b"},
        {"query": "q3", "positive": "p3", "id": "a"},
    ]
    path = _write_jsonl(tmp_path / "dup.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_pairs(path)
    assert str(info.value) == f"{path}: line 3: field 'id': duplicate id 'a' (first seen at line 1)"


def test_csv_errors_use_physical_line_numbers(tmp_path):
    path = tmp_path / "bad.csv"
    # row 1 spans lines 2-3 (quoted newline), so the empty query is on line 4
    path.write_text('query,positive,negatives\n"multi\nline",p,[]\n,p2,\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_pairs(path)
    assert str(info.value) == f"{path}: line 4: field 'query' is empty"

    path.write_text("query,positive,negatives\nq,p,not json\n", encoding="utf-8")
    with pytest.raises(
        DataError, match=r"bad\.csv: line 2: field 'negatives' must be a JSON array of strings"
    ):
        load_pairs(path)
    path.write_text("query,positive\nq,p,extra\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.csv: line 2: has 3 fields but the header has 2"):
        load_pairs(path)
    path.write_text("query,positive,id\nq,p,x\nq2,p2,x\n", encoding="utf-8")
    with pytest.raises(
        DataError, match=r"bad\.csv: line 3: field 'id': duplicate id 'x' \(first seen at line 2\)"
    ):
        load_pairs(path)


def test_parquet_errors_name_row_and_field(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"query": ["a b", "c d", None], "positive": ["x", "y", "z"]}), path)
    with pytest.raises(DataError) as info:
        load_pairs(path)
    assert str(info.value).startswith(
        f"{path}: row 2: field 'query' must be a non-empty string, got NoneType"
    )
    pq.write_table(pa.table({"query": ["a"], "positive": ["x"], "negatives": [[1, 2]]}), path)
    with pytest.raises(
        DataError, match=r"bad\.parquet: row 0: field 'negatives\[0\]' must be a non-empty string"
    ):
        load_pairs(path)


def test_json_array_errors_name_record(tmp_path):
    path = tmp_path / "arr.json"
    path.write_text(json.dumps([GOOD, {"query": "q", "positive": ""}]), encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_pairs(path)
    assert str(info.value) == f"{path}: record 1: field 'positive' is empty"
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(DataError, match=r"arr\.json: record 0: expected a JSON object"):
        load_pairs(path)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("empty.jsonl", "\n\n", "empty.jsonl: empty dataset (no rows)"),
        ("header.csv", "query,positive\n", "header.csv: empty dataset (no rows)"),
        ("nothing.csv", "", "nothing.csv: empty file"),
        (
            "broken.jsonl",
            '{"query": "a b", "positive": "c"}\n{"query": oops}\n',
            "broken.jsonl: line 2: invalid JSON",
        ),
        (
            "latin.jsonl",
            b'{"query": "a b", "positive": "c"}\n{"query": "\xe9"}\n',
            "latin.jsonl: line 2: not valid UTF-8",
        ),
        ("garbage.parquet", b"this is not parquet", "garbage.parquet: cannot read parquet file"),
        ("data.txt", "query\tpositive\n", "data.txt: unsupported file type '.txt'"),
    ],
)
def test_unreadable_and_empty_files(tmp_path, name, content, expected):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_pairs(path)
    assert str(info.value).startswith(f"{tmp_path}/{expected}")


def test_row_missing_a_column_other_rows_have(tmp_path):
    path = _write_jsonl(tmp_path / "m.jsonl", [{**GOOD, "source": "s"}, GOOD])
    with pytest.raises(DataError) as info:
        load_pairs(path)
    assert str(info.value) == f"{path}: line 2: missing field 'source'"


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        load_pairs(tmp_path / "nope.jsonl")
    (tmp_path / "dir.parquet").mkdir()
    with pytest.raises(DataError, match=r"dir\.parquet: is a directory"):
        load_pairs(tmp_path / "dir.parquet")


def test_empty_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "zero.parquet"
    pq.write_table(
        pa.table({"query": pa.array([], pa.string()), "positive": pa.array([], pa.string())}), path
    )
    with pytest.raises(DataError, match=r"zero\.parquet: empty dataset"):
        load_pairs(path)


def test_drop_duplicates(tmp_path):
    rows = [
        {"query": "q1", "positive": "p1", "id": "a"},
        {"query": "q1", "positive": "p1", "id": "a"},  # exact duplicate row, same id
        {"query": "q1", "positive": "p2", "id": "b"},
        {"query": "q3", "positive": "p3", "id": "c"},
    ]
    path = _write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match="line 2: field 'id': duplicate id 'a'"):
        load_pairs(path)
    ds = load_pairs(path, drop_duplicates=True)
    assert ds.ids == ["a", "b", "c"]
    auto = load_pairs(
        [{"query": "q", "positive": "p"}] * 2 + [{"query": "r", "positive": "p"}], drop_duplicates=True
    )
    assert auto.ids == ["row-0", "row-2"]  # auto ids keep the original row numbers
    assert load_pairs(auto, drop_duplicates=True) is auto


def test_codesearch_spec_errors():
    with pytest.raises(ConfigError, match="unknown codesearch split"):
        load_pairs("codesearch:validation")
    with pytest.raises(ConfigError, match="unknown codesearch option 'bogus'"):
        load_pairs("codesearch:train?bogus=1")
    with pytest.raises(ConfigError, match="cannot load pairs from int"):
        load_pairs(3)
