from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from hardbatch.errors import ConfigError, DataError
from hardbatch.evaluate.hardness import batch_hardness, random_batches_like, summarize_hardness
from hardbatch.mining.gcbs import GraphCollapseWarning, cut_batches, mine_gcbs


def planted(num_topics=20, per_topic=64, dim=32, noise=0.6, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_topics, dim))
    topic = rng.permutation(np.repeat(np.arange(num_topics), per_topic))
    q = centers[topic] + noise * rng.normal(size=(topic.size, dim))
    p = q + 0.8 * rng.normal(size=q.shape)
    return q.astype(np.float32), p.astype(np.float32), topic


def test_gcbs_batches_much_harder_than_random():
    q, p, topic = planted()
    result = mine_gcbs(q, p, 64, target_degree=32, device="cpu", seed=0)
    assert sorted(np.concatenate(result.batches).tolist()) == list(range(len(q)))
    gcbs = summarize_hardness(batch_hardness(q, p, result.batches))
    rand = summarize_hardness(batch_hardness(q, p, random_batches_like(result.batches, len(q))))
    assert gcbs["neg_sim_mean"] > rand["neg_sim_mean"] + 0.3
    assert gcbs["infonce"] > 5 * rand["infonce"]
    assert gcbs["recall@1"] < rand["recall@1"]
    purity = np.mean([np.bincount(topic[b]).max() / len(b) for b in result.batches])
    assert purity > 0.5  # a random batch of 64 over 20 topics has purity ~0.1
    s = result.stats
    assert s["bandwidth_after"] < s["bandwidth_before"] / 2
    assert s["same_batch_edge_fraction"] > 10 * s["same_batch_edge_fraction_random"]
    assert set(result.seconds) >= {"quantile", "threshold_graph", "rcm", "batching"}


def test_ivf_graph_method_keeps_the_batches_hard():
    pytest.importorskip("faiss")
    q, p, _ = planted()
    exact = mine_gcbs(q, p, 64, target_degree=32, device="cpu", seed=0)
    approx = mine_gcbs(q, p, 64, target_degree=32, device="cpu", seed=0, graph_method="ivf", nprobe=4)
    assert approx.threshold == exact.threshold  # the quantile is estimated the same way
    assert sorted(np.concatenate(approx.batches).tolist()) == list(range(len(q)))
    assert 0.7 * exact.stats["nnz_directed"] <= approx.stats["nnz_directed"] <= exact.stats["nnz_directed"]
    gcbs = summarize_hardness(batch_hardness(q, p, approx.batches))
    rand = summarize_hardness(batch_hardness(q, p, random_batches_like(approx.batches, len(q))))
    assert gcbs["neg_sim_mean"] > rand["neg_sim_mean"] + 0.3


def test_ivf_torch_graph_method_calibrates_its_edge_recall_and_records_it():
    q, p, _ = planted()
    exact = mine_gcbs(q, p, 64, target_degree=32, device="cpu", seed=0)
    approx = mine_gcbs(q, p, 64, target_degree=32, device="cpu", seed=0, graph_method="ivf_torch",
                       recall_target=0.9)  # fmt: skip
    assert approx.threshold == exact.threshold
    assert sorted(np.concatenate(approx.batches).tolist()) == list(range(len(q)))
    found = approx.stats["graph_search"]
    assert found["index"] == "ivf_torch" and found["calibrated_recall"] >= 0.9
    assert found["nprobe"] < found["nlist"] and 0 < found["searched_fraction"] < 0.5
    assert 0.8 * exact.stats["nnz_directed"] <= approx.stats["nnz_directed"] <= exact.stats["nnz_directed"]
    gcbs = summarize_hardness(batch_hardness(q, p, approx.batches))
    rand = summarize_hardness(batch_hardness(q, p, random_batches_like(approx.batches, len(q))))
    assert gcbs["neg_sim_mean"] > rand["neg_sim_mean"] + 0.3
    plan = approx.to_plan()
    assert plan.params["graph_method"] == "ivf_torch" and plan.params["recall_target"] == 0.9
    assert plan.params["nprobe"] is None  # asked: calibrate; what was used is in the stats
    assert plan.stats["gcbs"]["graph_search"]["nprobe"] == found["nprobe"]
    fixed = mine_gcbs(q, p, 64, target_degree=32, device="cpu", seed=0, graph_method="ivf_torch",
                      nprobe=found["nlist"])  # fmt: skip
    assert (
        fixed.stats["graph_search"]["exact_fallback"]
        and fixed.stats["nnz_directed"] == exact.stats["nnz_directed"]
    )
    with pytest.raises(ConfigError, match="recall_target"):
        mine_gcbs(q, p, 64, device="cpu", graph_method="ivf_torch", recall_target=1.5)


def test_nlist_sets_the_lists_of_both_ivf_methods():
    q, p, _ = planted()
    exact = mine_gcbs(q, p, 64, target_degree=32, device="cpu", seed=0)
    grouped = mine_gcbs(q, p, 64, target_degree=32, device="cpu", seed=0, graph_method="ivf_torch",
                        nlist=12, nprobe=2)  # fmt: skip
    found = grouped.stats["graph_search"]
    assert found["nlist"] == 12 and found["nprobe"] == 2  # the default would be about sqrt(1280) = 36
    assert grouped.to_plan().params["nlist"] == 12
    if importlib.util.find_spec("faiss") is not None:
        # every one of 12 lists probed is the exact graph; 12 of faiss's default ~143 lists would miss edges
        full = mine_gcbs(q, p, 64, target_degree=32, device="cpu", seed=0, graph_method="ivf", nlist=12,
                         nprobe=12)  # fmt: skip
        assert full.stats["nnz_directed"] == exact.stats["nnz_directed"]
        assert full.to_plan().params["nlist"] == 12
    with pytest.raises(ConfigError, match="nlist"):
        mine_gcbs(q, p, 64, device="cpu", graph_method="ivf_torch", nlist=0)


def test_paper_quantile_default_and_degree_alternative():
    q, p, _ = planted(num_topics=5, per_topic=40)
    default = mine_gcbs(q, p, 20, device="cpu")
    assert default.quantile == 0.999
    by_degree = mine_gcbs(q, p, 20, target_degree=10, device="cpu")
    assert by_degree.quantile == pytest.approx(1 - 10 / 200)
    assert by_degree.stats["degree_mean"] > default.stats["degree_mean"]


def test_collapse_warning_when_quantile_too_low():
    q, p, _ = planted(num_topics=4, per_topic=50, noise=2.0)
    with pytest.warns(GraphCollapseWarning, match="giant component"):
        mine_gcbs(q, p, 10, quantile=0.5, device="cpu")


def test_offset_wraps_and_only_last_batch_short():
    batches = cut_batches(np.arange(10), 4, offset=3)
    assert [b.tolist() for b in batches] == [[3, 4, 5, 6], [7, 8, 9, 0], [1, 2]]
    with pytest.raises(ConfigError):
        cut_batches(np.arange(10), 4, offset=10)


def test_to_plan_round_trip(tmp_path):
    q, p, _ = planted(num_topics=5, per_topic=41)
    result = mine_gcbs(q, p, 20, target_degree=10, device="cpu")
    plan = result.to_plan(params={"seed": 3})
    path = plan.save(tmp_path / "gcbs.parquet")
    from hardbatch.mining import BatchPlan

    loaded = BatchPlan.load(path)
    assert loaded.params["method"] == "gcbs" and loaded.num_examples == 205
    full = {tuple(sorted(b.tolist())) for b in result.batches if len(b) == 20}
    assert {tuple(sorted(b)) for b in loaded.batches(0)} == full


def test_bad_inputs():
    q, p, _ = planted(num_topics=2, per_topic=10)
    bad = q.copy()
    bad[7, 3] = np.nan
    with pytest.raises(DataError, match="row 7"):
        mine_gcbs(bad, p, 4, device="cpu")
    with pytest.raises(DataError, match="rows"):
        mine_gcbs(q, p[:-1], 4, device="cpu")
    with pytest.raises(ConfigError, match="larger than the data"):
        mine_gcbs(q, p, 50, device="cpu")
    with pytest.raises(ConfigError, match="not both"):
        mine_gcbs(q, p, 4, quantile=0.9, target_degree=3, device="cpu")
    with pytest.raises(ConfigError, match="graph_method"):
        mine_gcbs(q, p, 4, device="cpu", graph_method="hnsw")
