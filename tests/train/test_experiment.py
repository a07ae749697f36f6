from __future__ import annotations

import json
from pathlib import Path

import pytest

from hardbatch.app.experiment import GridConfig, format_grid, run_grid, write_grid_outputs


@pytest.fixture(scope="module")
def grid(tmp_path_factory, pairs_files, tiny_model_dir):
    import torch

    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("grid")
    config = GridConfig(
        work_dir=str(work),
        train_data=str(pairs_files["train"]),
        test_data=str(pairs_files["eval"]),
        model=str(tiny_model_dir),
        samplers=("random", "b3"),
        batch_sizes=(8, 16),
        seeds=(0, 1),
        train_pairs=32,
        test_pairs=None,
        max_seq_length=32,
        lr=1e-3,
        gradcache_from=16,
        gradcache_chunk=8,
        cluster_size=4,
        skip=1,
        window=8,
        eval_batch_size=16,
    )
    return config, run_grid(config, log=lambda line: None)


def test_every_cell_sees_the_same_pairs_and_is_summarised(grid):
    _, summary = grid
    cells = {(c["sampler"], c["batch_size"]): c for c in summary["cells"]}
    assert set(cells) == {("random", 8), ("random", 16), ("b3", 8), ("b3", 16)}
    assert cells[("random", 8)]["steps"] == 4 and cells[("random", 16)]["steps"] == 2
    for cell in cells.values():
        assert cell["seeds"] == [0, 1]
        assert len(cell["ndcg@10"]["values"]) == 2 and cell["ndcg@10"]["std"] >= 0
    assert cells[("b3", 8)]["neg_sim_mean"] > cells[("random", 8)]["neg_sim_mean"]
    assert set(summary["findings"]) >= {"ordering@8", "ordering@16"}


def test_rerun_skips_finished_cells_and_writes_outputs(grid, tmp_path):
    config, summary = grid
    lines: list[str] = []
    again = run_grid(config, log=lines.append)
    assert sum("skipped" in line for line in lines) == 8
    assert again["cells"] == summary["cells"]
    paths = write_grid_outputs(again, tmp_path, "quality")
    text = paths["md"].read_text()
    assert "| b3 |" in text and "± " in text
    assert paths["png"].stat().st_size > 1000
    assert format_grid(again).startswith("# Quality grid")


def test_one_seed_cells_have_no_spread(tmp_path):
    """A cell run with one seed reports std None, '(1 seed)' in the table, and no 'beyond 1 std' verdict."""
    from hardbatch.app.experiment import summarize_grid
    from hardbatch.io import write_json

    config = GridConfig(
        work_dir=str(tmp_path), samplers=("random", "b3"), batch_sizes=(64, 512), seeds=(0, 1)
    )
    (tmp_path / "cells").mkdir()
    runs = {("b3", 64, 0): 0.57, ("b3", 64, 1): 0.58, ("random", 512, 0): 0.55}
    for (sampler, batch, seed), ndcg in runs.items():
        metrics = {"ndcg@10": ndcg, "mrr@10": ndcg - 0.05, "recall@1": 0.3, "recall@10": 0.7}
        write_json(
            tmp_path / "cells" / f"{sampler}-b{batch}-s{seed}.json",
            {"key": config.cell_key(sampler, batch, seed), "seed": seed, "steps": 10, "train_seconds": 1.0,
             "metrics": metrics},
        )  # fmt: skip
    summary = summarize_grid(config, {"ndcg@10": 0.46, "mrr@10": 0.41})
    by = {(c["sampler"], c["batch_size"]): c for c in summary["cells"]}
    assert by[("random", 512)]["ndcg@10"]["std"] is None
    assert by[("b3", 64)]["ndcg@10"]["std"] == pytest.approx(0.00707, abs=1e-4)
    finding = summary["findings"]["b3@64 vs random@512"]
    assert finding["holds"] is True and finding["beyond_1_std"] is None
    table = format_grid(summary)
    assert "0.5500 (1 seed)" in table and "0.5750 ± 0.0071" in table


def test_equal_batch_comparisons_pair_the_seeds(tmp_path):
    """Per-seed differences against random at the same batch size: a sampler that wins on its own seed's
    data every time "holds" even when the means' spreads overlap; one losing seed breaks it."""
    from hardbatch.app.experiment import summarize_grid
    from hardbatch.io import write_json

    config = GridConfig(
        work_dir=str(tmp_path), samplers=("random", "b3", "gcbs"), batch_sizes=(32,), seeds=(0, 1, 2)
    )
    (tmp_path / "cells").mkdir()
    random_runs = [0.60, 0.63, 0.66]  # wide spread across seeds (the data subsets differ)
    values = {"random": random_runs, "b3": [v + 0.004 for v in random_runs], "gcbs": [0.61, 0.62, 0.67]}
    for sampler, ndcgs in values.items():
        for seed, ndcg in enumerate(ndcgs):
            metrics = {"ndcg@10": ndcg, "mrr@10": ndcg - 0.05, "recall@1": 0.3, "recall@10": 0.7}
            write_json(
                tmp_path / "cells" / f"{sampler}-b32-s{seed}.json",
                {"key": config.cell_key(sampler, 32, seed), "seed": seed, "steps": 4, "train_seconds": 1.0,
                 "metrics": metrics},
            )  # fmt: skip
    findings = summarize_grid(config, {"ndcg@10": 0.5, "mrr@10": 0.45})["findings"]
    b3 = findings["b3@32 vs random@32"]
    assert b3["delta"] == pytest.approx(0.004) and b3["holds"] is True and b3["seeds"] == [0, 1, 2]
    assert b3["paired_std"] == pytest.approx(0.0, abs=1e-9) and b3["beyond_1_std"] is True
    gcbs = findings["gcbs@32 vs random@32"]  # +0.01, -0.01, +0.01
    assert gcbs["holds"] is False and gcbs["beyond_1_std"] is False
    assert "random@32 vs random@32" not in findings


def test_the_plan_cache_re_mines_for_another_window_seed_or_teacher(tmp_path, train_pairs):
    from dataclasses import replace
    from types import SimpleNamespace

    import numpy as np

    from hardbatch.app.experiment import _plan

    rng = np.random.default_rng(0)
    teacher_a = SimpleNamespace(
        query=rng.standard_normal((32, 8)).astype(np.float32),
        positive=rng.standard_normal((32, 8)).astype(np.float32),
    )
    teacher_b = SimpleNamespace(query=teacher_a.query[::-1].copy(), positive=teacher_a.positive[::-1].copy())
    config = GridConfig(cluster_size=4, skip=1, window=8)
    first = _plan(config, teacher_a, train_pairs, 8, tmp_path)
    path = tmp_path / "b3-plan-b8.parquet"
    stamp = path.stat().st_mtime_ns
    assert _plan(config, teacher_a, train_pairs, 8, tmp_path).fingerprint == first.fingerprint
    assert path.stat().st_mtime_ns == stamp  # reused, not re-mined
    wider = _plan(replace(config, window=4), teacher_a, train_pairs, 8, tmp_path)
    assert wider.params["window"] == 4
    other_teacher = _plan(config, teacher_b, train_pairs, 8, tmp_path)
    assert other_teacher.hashes["query_emb"] != first.hashes["query_emb"]
    assert other_teacher.num_examples == 32


def test_check_matches_compares_mining_parameters(tmp_path):
    import numpy as np

    from hardbatch.errors import StaleCacheError
    from hardbatch.mining import mine_b3

    emb = np.random.default_rng(1).standard_normal((16, 4)).astype(np.float32)
    plan = mine_b3(
        emb, emb, batch_size=4, cluster_size=2, skip=0, window=4, device="cpu", show_progress=False
    )
    plan.check_matches(params={"window": 4, "seed": 0, "batch_size": 4})
    with pytest.raises(StaleCacheError, match=r"mined with other parameters \(window: 4 \(plan\) != 30"):
        plan.check_matches(params={"window": 30, "seed": 0})


def test_sampler_options_are_part_of_the_cell_key():
    from hardbatch.app.experiment import GridConfig, _sampler_options

    config = GridConfig()
    assert config.sampler_settings("gcbs", 64) == {"target_degree": 32}  # docs: batch / 2, not batch
    from hardbatch.samplers import SamplerInputs

    assert _sampler_options("b3pp", SamplerInputs(plan="PLAN"), 32, config) == {
        "plan": "PLAN", "global_batches": True, "num_hard_negatives": 2,
    }  # fmt: skip
    more = GridConfig(hard_negatives=5)
    assert more.cell_key("b3pp", 32, 0) != config.cell_key("b3pp", 32, 0)
    assert more.cell_key("random-hn", 32, 0) != config.cell_key("random-hn", 32, 0)
    assert more.cell_key("b3", 32, 0) == config.cell_key("b3", 32, 0)  # B3 has no hard negatives
    assert more.cell_key("random", 32, 0) == config.cell_key("random", 32, 0)
    assert config.cell_key("b3", 32, 0) != config.cell_key("b3pp", 32, 0)


def test_leiden_and_remine_cells_get_their_plan_and_trainer_option_not_a_sampler_option():
    from hardbatch.app.experiment import GridConfig, _sampler_options
    from hardbatch.samplers import SamplerInputs

    config = GridConfig()
    assert config.sampler_settings("b3-leiden", 32)["community"] == "leiden"
    assert config.sampler_settings("b3-remine", 32)["remine_every"] == 1
    for cell in ("b3-leiden", "b3-remine"):
        # community is mined into the plan; remine_every goes to the trainer, which has the student
        assert _sampler_options(cell, SamplerInputs(plan="PLAN"), 32, config) == {
            "plan": "PLAN", "global_batches": True,
        }  # fmt: skip
    keys = {config.cell_key(cell, 32, 0) for cell in ("b3", "b3-leiden", "b3-remine")}
    assert len(keys) == 3


def test_a_leiden_plan_is_cached_apart_from_the_metis_plan(tmp_path, train_pairs):
    from types import SimpleNamespace

    import numpy as np

    from hardbatch.app.experiment import _plan
    from hardbatch.mining import BatchPlan

    rng = np.random.default_rng(0)
    teacher = SimpleNamespace(
        query=rng.standard_normal((32, 8)).astype(np.float32),
        positive=rng.standard_normal((32, 8)).astype(np.float32),
    )
    config = GridConfig(cluster_size=4, skip=1, window=8)
    metis = _plan(config, teacher, train_pairs, 8, tmp_path)
    leiden = _plan(config, teacher, train_pairs, 8, tmp_path, community="leiden")
    assert metis.params["community"] == "metis" and leiden.params["community"] == "leiden"
    assert (tmp_path / "b3-leiden-plan-b8.parquet").exists()
    assert _plan(config, teacher, train_pairs, 8, tmp_path).params["community"] == "metis"
    # A plan mined before recursive bisection (no metis_mode recorded: its "metis" was a k-way call) is
    # re-mined, not reused.
    path = tmp_path / "b3-plan-b8.parquet"
    old = BatchPlan.load(path)
    assert old.params["metis_mode"] == "recursive"
    del old.params["metis_mode"]
    old.save(path)
    assert "metis_mode" not in BatchPlan.load(path).params
    assert _plan(config, teacher, train_pairs, 8, tmp_path).params["metis_mode"] == "recursive"
    assert BatchPlan.load(path).params["metis_mode"] == "recursive"


def test_an_unknown_grid_row_is_refused_before_any_model_runs(tmp_path):
    from hardbatch.app.experiment import grid_sampler_names, run_grid
    from hardbatch.errors import ConfigError

    assert {"random", "b3", "b3pp", "b3-leiden", "b3-remine", "random-hn"} <= set(grid_sampler_names())
    config = GridConfig(work_dir=str(tmp_path / "grid"), samplers=("random", "b3leiden"), train_data="nope")
    with pytest.raises(ConfigError, match=r"unknown grid sampler\(s\) b3leiden; choose from .*b3-leiden"):
        run_grid(config)  # train_data "nope" would fail later: the name check comes first
    assert not (tmp_path / "grid").exists()


def test_the_training_precision_is_part_of_the_cell_key_and_fp32_keeps_the_earlier_keys(monkeypatch):
    from hardbatch.app.experiment import GridConfig
    from hardbatch.device import BF16_MATMUL_ENV

    results = Path(__file__).parents[2] / "benchmarks" / "results" / "quality" / "cells"
    earlier = json.loads((results / "random-b32-s0.json").read_text())["key"]  # trained before the field
    assert GridConfig(precision="fp32").cell_key("random", 32, 0) == earlier
    bf16 = GridConfig(precision="bf16").cell_key("random", 32, 0)
    assert bf16 != earlier
    for fast, key in (("0", earlier), ("1", bf16)):  # "auto" is keyed by what it trains in here
        monkeypatch.setenv(BF16_MATMUL_ENV, fast)
        assert GridConfig().cell_key("random", 32, 0) == key
