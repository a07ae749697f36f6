"""``hardbatch inspect`` and ``hardbatch mine gcbs`` end to end on a small planted data set."""

from __future__ import annotations

import json

import numpy as np
from properties import planted_embeddings
from typer.testing import CliRunner

from hardbatch.app.cli.main import app


def _write_data(tmp_path):
    query, positive, topic = planted_embeddings(num_topics=8, per_topic=32, dim=16, noise=0.3, seed=7)
    rows = [
        {"query": f"query {i} about topic {t}", "positive": f"answer {i}", "source": f"src{t % 2}"}
        for i, t in enumerate(topic)
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    np.save(tmp_path / "q.npy", query)
    np.save(tmp_path / "p.npy", positive)
    return data, tmp_path / "q.npy", tmp_path / "p.npy"


def test_mine_gcbs_then_inspect_every_strategy(tmp_path):
    data, q, p = _write_data(tmp_path)
    runner = CliRunner()
    emb = ["--query-emb", str(q), "--positive-emb", str(p)]
    plan = tmp_path / "gcbs.parquet"
    mined = runner.invoke(app, ["mine", "gcbs", str(data), "-o", str(plan), "-b", "16", "--target-degree", "16",
                                "--device", "cpu", *emb])  # fmt: skip
    assert mined.exit_code == 0, mined.output
    assert plan.exists()
    ivf_plan = tmp_path / "gcbs-ivf.parquet"
    ivf = runner.invoke(app, ["mine", "gcbs", str(data), "-o", str(ivf_plan), "-b", "16", "--target-degree", "16",
                              "--graph-method", "ivf", "--nprobe", "4", *emb])  # fmt: skip
    assert ivf.exit_code == 0, ivf.output
    from hardbatch.mining import BatchPlan

    assert BatchPlan.load(ivf_plan).params["graph_method"] == "ivf"
    grouped_plan = tmp_path / "gcbs-ivf-torch.parquet"
    grouped = runner.invoke(app, ["mine", "gcbs", str(data), "-o", str(grouped_plan), "-b", "16", "--target-degree",
                                  "16", "--graph-method", "ivf_torch", "--recall-target", "0.9", "--nlist", "6",
                                  "--device", "cpu", *emb])  # fmt: skip
    assert grouped.exit_code == 0, grouped.output
    params = BatchPlan.load(grouped_plan).params
    assert params["graph_method"] == "ivf_torch" and params["recall_target"] == 0.9 and params["nlist"] == 6
    out = tmp_path / "inspect"
    args = ["inspect", str(data), "-o", str(out), "-b", "16", "--plan", str(plan), "--option",
            "gcbs.target_degree=16", "--option", "topic.n_clusters=8", "--option", "b3.mine_options={\"cluster_size\": 8, \"skip\": 0, \"window\": 8}", *emb]  # fmt: skip
    for name in ("random", "nodup", "topic", "source", "gcbs", "b3"):
        args += ["--sampler", name]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "inspect.json").read_text())
    assert (out / "inspect.png").stat().st_size > 10_000
    strategies = report["strategies"]
    assert set(strategies) == {"random", "nodup", "topic", "source", "gcbs", "b3", "plan:gcbs"}
    for name in ("topic", "gcbs", "plan:gcbs", "b3"):
        # Mined strategies are much harder than random batches of the same size on planted topics.
        assert strategies[name]["neg_sim_mean"] > strategies[name]["random"]["neg_sim_mean"] + 0.2, name
        assert strategies[name]["knn_pair_coverage"] > 3 * strategies[name]["random_knn_pair_coverage"], name
    assert abs(strategies["random"]["neg_sim_mean"] - strategies["random"]["random"]["neg_sim_mean"]) < 0.05
    assert strategies["topic"]["groups"]["num_groups"] == 8
    assert strategies["source"]["groups"]["groups_per_batch"] == [1] * strategies["source"]["batches"]
    assert "gcbs" in report["details"]["gcbs"]


def test_inspect_reports_bad_input_in_one_line(tmp_path):
    data, q, _ = _write_data(tmp_path)
    result = CliRunner().invoke(app, ["inspect", str(data), "--query-emb", str(q)])
    assert result.exit_code != 0
    assert "both --query-emb and --positive-emb" in str(result.exception) + result.output


def test_inspect_refuses_a_plan_mined_on_other_data_of_the_same_size(tmp_path):
    data, q, p = _write_data(tmp_path)
    runner = CliRunner()
    emb = ["--query-emb", str(q), "--positive-emb", str(p)]
    plan = tmp_path / "gcbs.parquet"
    mined = runner.invoke(app, ["mine", "gcbs", str(data), "-o", str(plan), "-b", "16", "--target-degree", "16",
                                "--device", "cpu", *emb])  # fmt: skip
    assert mined.exit_code == 0, mined.output
    other = tmp_path / "other.jsonl"
    other.write_text(data.read_text().replace("answer", "reply"))
    args = [
        "inspect",
        str(other),
        "-o",
        str(tmp_path / "out"),
        "-b",
        "16",
        "--plan",
        str(plan),
        *emb,
    ]
    result = runner.invoke(app, args)
    from hardbatch.errors import StaleCacheError

    assert isinstance(result.exception, StaleCacheError), result.output
    assert "gcbs.parquet is stale: its dataset hash" in str(result.exception)


def test_inspect_reports_false_negatives_with_b3pp_columns(tmp_path):
    data, q, p = _write_data(tmp_path)
    out = tmp_path / "inspect"
    mine = '{"cluster_size": 8, "skip": 1, "window": 8}'
    args = ["inspect", str(data), "-o", str(out), "-b", "16", "--k", "0", "--query-emb", str(q),
            "--positive-emb", str(p), "--sampler", "random", "--sampler", "b3", "--sampler", "random-hn",
            "--option", f"b3.mine_options={mine}", "--option", "b3.num_hard_negatives=1",
            "--option", f"random-hn.mine_options={mine}", "--option", "random-hn.num_hard_negatives=1"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "inspect.json").read_text())["strategies"]
    for name in ("b3", "random-hn"):
        fn = report[name]["false_negatives"]
        assert fn["extra_pairs"] == report[name]["rows"] * 16  # h = 1 per example: 16 columns per batch
        assert 0.0 <= fn["extra_above_positive"] <= 1.0 and "duplicate_text" in fn
    assert "extra_pairs" not in report["random"]["false_negatives"]
