from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from hardbatch.app.cli.mine_cmd import register
from hardbatch.errors import ConfigError, DataError
from hardbatch.mining import BatchPlan


@pytest.fixture(scope="module")
def app():
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    return app


def _embeddings(tmp_path, n=96, nan_row=None):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(12, 16))
    q = (np.repeat(centers, n // 12, axis=0) + 0.2 * rng.normal(size=(n, 16))).astype(np.float32)
    p = (q + 0.1 * rng.normal(size=q.shape)).astype(np.float32)
    if nan_row is not None:
        p[nan_row] = np.nan
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "p.npy", p)
    return tmp_path / "q.npy", tmp_path / "p.npy"


def test_mine_b3_from_embedding_files(app, tmp_path):
    q, p = _embeddings(tmp_path)
    out = tmp_path / "plan.parquet"
    args = ["mine", "b3", "--query-emb", str(q), "--positive-emb", str(p), "-o", str(out)]
    result = CliRunner().invoke(
        app, [*args, "-b", "16", "-k", "8", "--skip", "1", "--window", "10", "--knn", "hnsw"]
    )
    assert result.exit_code == 0, result.output
    assert "batch plan" in result.output and "approximate kNN recall" in result.output
    plan = BatchPlan.load(out, expected_num_examples=96)
    assert plan.params["knn"] == "hnsw" and plan.params["teacher"] == "user embeddings"
    assert (plan.params["skip"], plan.params["window"], plan.params["cluster_size"]) == (1, 10, 8)
    # Rows 8t .. 8t + 7 share centre t: every cluster must be one planted centre (any 8 rows would give
    # 96 / 8 = 12 clusters, so the count alone says nothing).
    assert sorted(tuple(np.unique(c // 8)) for c in plan.clusters) == [(t,) for t in range(12)]


def test_mine_b3_with_the_grouped_ivf_prints_recall_and_hardness(app, tmp_path):
    pytest.importorskip("faiss")
    q, p = _embeddings(tmp_path)
    out = tmp_path / "plan.parquet"
    args = ["mine", "b3", "--query-emb", str(q), "--positive-emb", str(p), "-o", str(out)]
    result = CliRunner().invoke(
        app, [*args, "-b", "16", "-k", "8", "--skip", "1", "--window", "6", "--knn", "ivf_torch"]
    )
    assert result.exit_code == 0, result.output
    assert "window recall" in result.output and "window hardness" in result.output
    plan = BatchPlan.load(out, expected_num_examples=96)
    info = plan.stats["knn_info"]
    searched = "exact search" if info["exact_fallback"] else f"{info['searched_fraction']:.1%} of products"
    assert f"nprobe {info['nprobe']} of {info['nlist']} lists: {searched}" in " ".join(result.output.split())
    assert plan.params["knn"] == "ivf_torch" and plan.stats["knn_info"]["index"] == "ivf_torch"
    assert plan.stats["knn_window_hardness"] > 0.9


def test_mine_b3_from_data_with_a_teacher_directory(app, tmp_path, tiny_model):
    teacher = tmp_path / "teacher"
    tiny_model.save(str(teacher))
    data = tmp_path / "pairs.jsonl"
    rows = [
        {"query": f"question {i % 20} about topic {i % 4}", "positive": f"answer {i}", "source": f"s{i % 2}"}
        for i in range(64)
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "plan.parquet"
    result = CliRunner().invoke(
        app,
        [
            "mine",
            "b3",
            str(data),
            "--teacher",
            str(teacher),
            "--emb-dir",
            str(tmp_path / "emb"),
            "-o",
            str(out),
            "-b",
            "8",
            "-k",
            "4",
            "--skip",
            "1",
            "--window",
            "5",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    plan = BatchPlan.load(out, expected_num_examples=64)
    assert plan.source_names == ["s0", "s1"] and "dataset" in plan.hashes
    codes = plan.example_sources()
    assert all(np.unique(codes[b]).size == 1 for b in plan.batches(0))
    assert (tmp_path / "emb" / "query.npy").exists()


def test_cli_errors(app, tmp_path):
    q, p = _embeddings(tmp_path)
    base = ["mine", "b3", "--query-emb", str(q), "--positive-emb", str(p), "-o", str(tmp_path / "x.parquet")]
    result = CliRunner().invoke(app, [*base, "-b", "12", "-k", "8"])
    assert isinstance(result.exception, ConfigError) and "multiple of 8" in str(result.exception)
    result = CliRunner().invoke(app, ["mine", "b3", "--query-emb", str(q)])
    assert isinstance(result.exception, ConfigError)
    result = CliRunner().invoke(app, [*base, "-b", "16", "-k", "8", "--exchange", "broadcast"])
    assert isinstance(result.exception, ConfigError) and "exchange must be one of" in str(result.exception)
    result = CliRunner().invoke(
        app, [*base, "-b", "16", "-k", "8", "--exchange", "ring", "--shard-size", "32"]
    )
    assert isinstance(result.exception, ConfigError) and "--shard-size" in str(result.exception)
    result = CliRunner().invoke(
        app, [*base, "-b", "16", "-k", "8", "--exchange", "ring"]
    )  # one process: no-op
    assert result.exit_code == 0, result.output
    q, p = _embeddings(tmp_path, nan_row=7)
    result = CliRunner().invoke(app, [*base, "-b", "16", "-k", "8"])
    assert isinstance(result.exception, DataError) and "row 7" in str(result.exception)


def _source_data(tmp_path, n=96):
    data = tmp_path / "pairs.jsonl"
    rows = [
        {"query": f"q {i}", "positive": f"p {i}", "source": "web" if i < n // 2 else "okvqa"}
        for i in range(n)
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    return data


def test_per_source_skip_window_and_options(app, tmp_path):
    q, p = _embeddings(tmp_path)
    data = _source_data(tmp_path)
    out = tmp_path / "plan.parquet"
    base = ["mine", "b3", str(data), "--query-emb", str(q), "--positive-emb", str(p), "-o", str(out)]
    result = CliRunner().invoke(
        app,
        [*base, "-b", "16", "-k", "8", "--skip", "okvqa=3", "--skip-default", "1", "--window", "web=6,okvqa=5",
         "--exclude-self", "--community", "leiden"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    plan = BatchPlan.load(out)
    assert plan.params["skip"] == {"okvqa": 3, "web": 1} and plan.params["window"] == {"okvqa": 5, "web": 6}
    assert plan.params["count_self"] is False and plan.params["community"] == "leiden"
    assert plan.skipped is not None and plan.skipped.nnz == 48 * 3 + 48 * 1
    result = CliRunner().invoke(app, [*base, "-b", "16", "-k", "8", "--skip", "okvqa=3"])
    assert isinstance(result.exception, ConfigError) and "missing web" in str(result.exception)
    result = CliRunner().invoke(app, [*base, "-b", "16", "-k", "8", "--skip", "okvqa=x"])
    assert isinstance(result.exception, ConfigError) and "SOURCE=INT" in str(result.exception)


def test_paper_preset(app, tmp_path):
    q, p = _embeddings(tmp_path)
    data = _source_data(tmp_path)
    out = tmp_path / "plan.parquet"
    base = ["mine", "b3", str(data), "--query-emb", str(q), "--positive-emb", str(p), "-o", str(out)]
    result = CliRunner().invoke(app, [*base, "--preset", "b3-paper", "-b", "16", "-k", "8"])
    assert result.exit_code == 0, result.output
    assert "p=70 for okvqa" in result.output
    params = BatchPlan.load(out).params
    assert params["skip"] == {"okvqa": 70, "web": 30} and params["window"] == 100
    assert params["cluster_size"] == 8 and params["batch_size"] == 16  # explicit options win
    assert params["count_self"] is True and params["preset"] == "b3-paper"
    assert params["community"] == "metis-kway" and params["metis_mode"] == "kway"  # the official code's call
    result = CliRunner().invoke(app, [*base, "--preset", "b3-paper"])  # K=32, |B|=1024 > 96 examples
    assert isinstance(result.exception, ConfigError) and "larger than the data" in str(result.exception)


def test_key_block_size_option_mines_the_same_plan(app, tmp_path):
    q, p = _embeddings(tmp_path)
    base = ["mine", "b3", "--query-emb", str(q), "--positive-emb", str(p), "-b", "16", "-k", "8"]
    base += ["--skip", "1", "--window", "10", "--precision", "fp32"]
    for name, extra in (("whole", []), ("blocked", ["--key-block-size", "25"])):
        result = CliRunner().invoke(app, [*base, *extra, "-o", str(tmp_path / f"{name}.parquet")])
        assert result.exit_code == 0, result.output
    whole = BatchPlan.load(tmp_path / "whole.parquet")
    blocked = BatchPlan.load(tmp_path / "blocked.parquet")
    np.testing.assert_array_equal(blocked.clusters, whole.clusters)
    assert blocked.stats["knn_info"]["key_blocks"] == 4 and "key_blocks" not in whole.stats["knn_info"]
    result = CliRunner().invoke(app, [*base, "--key-block-size", "0", "-o", str(tmp_path / "x.parquet")])
    assert isinstance(result.exception, ConfigError) and "key_block_size" in str(result.exception)


def test_cli_key_block_size_and_memory_budget_mine_the_same_plans(app, tmp_path):
    q, p = _embeddings(tmp_path)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"query": f"q{i}", "positive": f"p{i}"}) + "\n" for i in range(96)))
    emb = ["--query-emb", str(q), "--positive-emb", str(p)]
    gcbs = ["mine", "gcbs", str(data), *emb, "-b", "12", "--target-degree", "6", "--precision", "fp32"]
    b3 = ["mine", "b3", *emb, "-b", "12", "-k", "6", "--skip", "1", "--window", "8", "--precision", "fp32"]
    runs = {"whole": [], "blocked": ["--key-block-size", "25"], "budget": ["--memory-budget", "40MiB"]}
    plans = {}
    for command, base in (("gcbs", gcbs), ("b3", b3)):
        for name, extra in runs.items():
            out = tmp_path / f"{command}-{name}.parquet"
            result = CliRunner().invoke(app, [*base, *extra, "-o", str(out)])
            assert result.exit_code == 0, result.output
            plans[command, name] = BatchPlan.load(out)
        for name in ("blocked", "budget"):
            np.testing.assert_array_equal(plans[command, name].clusters, plans[command, "whole"].clusters)
    assert plans["gcbs", "blocked"].stats["gcbs"]["key_blocks"] == 4
    assert "key_blocks" not in plans["gcbs", "whole"].stats["gcbs"]
    assert plans["b3", "budget"].stats["knn_info"]["memory_budget"] == 40 * 2**20
    result = CliRunner().invoke(app, [*gcbs, "--key-block-size", "auto", "-o", str(tmp_path / "x.parquet")])
    assert isinstance(result.exception, ConfigError) and "needs memory_budget" in str(result.exception)
    result = CliRunner().invoke(app, [*b3, "--memory-budget", "lots", "-o", str(tmp_path / "x.parquet")])
    assert isinstance(result.exception, ConfigError) and "memory_budget" in str(result.exception)
    result = CliRunner().invoke(app, [*b3, "--key-block-size", "x1", "-o", str(tmp_path / "x.parquet")])
    assert isinstance(result.exception, ConfigError) and "--key-block-size" in str(result.exception)


def test_shard_size_with_key_blocks_and_a_budget_mines_the_same_hierarchical_plan(app, tmp_path):
    q, p = _embeddings(tmp_path, n=300)
    base = ["mine", "b3", "--query-emb", str(q), "--positive-emb", str(p), "-b", "20", "-k", "10",
            "--skip", "1", "--window", "10", "--precision", "fp32", "--device", "cpu", "--shard-size", "150"]  # fmt: skip
    runs = {"whole": [], "blocked": ["--key-block-size", "37"], "budget": ["--memory-budget", "64MiB"]}
    plans = {}
    for name, extra in runs.items():
        result = CliRunner().invoke(app, [*base, *extra, "-o", str(tmp_path / f"{name}.parquet")])
        assert result.exit_code == 0, result.output
        plans[name] = BatchPlan.load(tmp_path / f"{name}.parquet")
        # The summary says how much of the flat rank windows the two shards keep.
        assert "flat window kept by the shards" in " ".join(result.output.split()), result.output
    assert plans["whole"].params["hierarchical"] == {"shard_size": 150, "shards": 2}
    assert plans["whole"].stats["coarse_window_recall"]["sample"] == 256
    for name in ("blocked", "budget"):
        np.testing.assert_array_equal(plans[name].clusters, plans["whole"].clusters)
        np.testing.assert_array_equal(plans[name].remainder, plans["whole"].remainder)
    assert [s["key_blocks"] for s in plans["blocked"].stats["shards"]] == [5, 5]  # 150 keys in blocks of 37
    assert [s["key_block_size"] for s in plans["budget"].stats["shards"]] == [150, 150]
    assert plans["budget"].params["memory_budget"] == "64MiB"
    for extra, message in ((["--memory-budget", "1KiB"], "too small for the exact kNN"),
                           (["--key-block-size", "auto"], "needs memory_budget"),
                           (["--key-block-size", "0"], "key_block_size must be a positive integer")):  # fmt: skip
        result = CliRunner().invoke(app, [*base, *extra, "-o", str(tmp_path / "x.parquet")])
        assert isinstance(result.exception, ConfigError) and message in str(result.exception), result.output
        assert not (tmp_path / "x.parquet").exists()


def test_bad_key_block_options_are_refused_before_the_data_is_read(app, tmp_path):
    missing = str(tmp_path / "no-such-pairs.jsonl")  # reading it would be a DataError
    for command, extra, message in (
        ("b3", ["--memory-budget", "lots"], "memory_budget must be a size"),
        ("b3", ["--key-block-size", "64", "--knn", "hnsw"], "knn='exact' only"),
        ("gcbs", ["--key-block-size", "64", "--memory-budget", "1GiB"], "not both"),
    ):
        result = CliRunner().invoke(
            app, ["mine", command, missing, *extra, "-o", str(tmp_path / "x.parquet")]
        )
        assert isinstance(result.exception, ConfigError) and message in str(result.exception), result.output
