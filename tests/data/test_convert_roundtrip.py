"""``hardbatch data convert`` round-trips: every format chain gives back the same dataset (same fingerprint).

The rows carry what a lossy writer would drop or mangle: unicode, newlines, quotes and commas (CSV),
hard negatives of different lengths, ids and sources.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from hardbatch.app.cli.main import app
from hardbatch.data import PairDataset, load_pairs

DATASET = PairDataset(
    ["sort a list, in place", "read «the» file\nline two", 'say "hi"', "mean of values"],
    [
        "def sort(xs):\n    xs.sort()",
        "def read(p):\n\treturn open(p).read()",
        "print('hi')",
        "def mean(xs): ...",
    ],
    negatives=[["def a(): pass", "def b(): pass"], ["x = 1"], [], ["def median(xs): ...", "π = 3.14"]],
    ids=["r0", "r1", "r2", "r3"],
    sources=["alpha", "beta", "alpha", "gamma"],
    name="tricky",
)


@pytest.mark.parametrize(
    "chain", [("parquet",), ("jsonl",), ("json",), ("parquet", "csv", "jsonl"), ("json", "parquet", "json")]
)
def test_convert_round_trip_keeps_the_fingerprint(tmp_path, chain):
    current = DATASET.save(tmp_path / "start.jsonl")
    for step, extension in enumerate(chain):
        target = tmp_path / f"step{step}.{extension}"
        result = CliRunner().invoke(app, ["--quiet", "data", "convert", str(current), str(target)])
        assert result.exit_code == 0, result.output
        current = target
    back = load_pairs(str(current))
    assert back.fingerprint == DATASET.fingerprint
    assert [back[i] for i in range(len(back))] == [DATASET[i] for i in range(len(DATASET))]
