"""GCBS with ``graph_method="ivf_torch"`` spread over gloo ranks gives the one-process refresh; failures reach
every rank.

The ranks build the IVF layout together (k-means iterations, list and group assignment, group means and the
calibration's sampled rows in fixed blocks: every rank must do a share, the shares must add up to one
set-up's); the groups are dealt by their products and each rank thresholds its own; rank 0 gathers the
edges. Rank 0 also runs the one-process :func:`mine_gcbs` on the same inputs in its own process (same
threads, so the same k-means) and the parent compares order, threshold and statistics exactly. A group
searched twice (an edge counted twice) or never, a layout rebuilt per rank with another seed or ``nprobe``,
edges gathered out of row order: each changes the graph and so the order. Runs: fixed ``nprobe``,
``nprobe`` calibrated to an edge recall, and the exact fallback (every list probed).
"""

from __future__ import annotations

import json
import os
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from failing_ranks import TIMEOUT, failing, promptly

from hardbatch.errors import ConfigError, DataError
from hardbatch.mining.gcbs import mine_gcbs

pytestmark = pytest.mark.distributed

N, DIM = 901, 16  # 23 lists (N // 39); odd N
COMMON = dict(target_degree=12, seed=2, device="cpu", precision="fp32", show_progress=False,
              graph_method="ivf_torch")  # fmt: skip
RUNS = {
    "fixed": dict(COMMON, nprobe=3),
    "calibrated": dict(COMMON, recall_target=0.9),
    "fallback": dict(COMMON, nprobe=23),
}


def _data():
    rng = np.random.default_rng(4)
    centres = 3 * rng.normal(size=(40, DIM))
    q = centres[rng.integers(0, 40, N)] + rng.normal(size=(N, DIM))
    p = q + 0.5 * rng.normal(size=q.shape)
    return (2 * q).astype(np.float32), p.astype(np.float32)


def _failure_checks(rank: int, q, p) -> None:
    import hardbatch.graph.ivf_threshold as ivf_threshold
    from hardbatch.mining.distributed import mine_gcbs_distributed

    gcbs = lambda positive=p, **kw: mine_gcbs_distributed(q, positive, 20, **{**RUNS["fixed"], **kw})  # noqa: E731
    original = ivf_threshold.threshold_groups
    # A rank > 0 fails while thresholding its groups: a user error travels as itself...
    if rank == 1:
        ivf_threshold.threshold_groups = failing("row 5: unreadable embedding")
    promptly(DataError, "row 5: unreadable embedding", gcbs)
    # ... any other exception as a RuntimeError naming the rank (the failing rank raises its own).
    if rank == 1:
        ivf_threshold.threshold_groups = failing("out of memory")
    expected = "out of memory" if rank == 1 else "rank 1 failed while building its slice of the GCBS graph"
    promptly(RuntimeError, expected, gcbs)
    ivf_threshold.threshold_groups = original
    # Rank 1 reads a truncated copy of the positives: found from rank 0's shape, before any search.
    promptly(DataError, r"positive embeddings on rank 1: shape \(900, 16\)",
             lambda: gcbs(positive=p[:-1] if rank == 1 else p))  # fmt: skip
    # A bad nprobe, found when the layout is built (mine_gcbs checks it on rank 0 first): every rank raises.
    promptly(ConfigError, "nprobe must be a positive integer", lambda: gcbs(nprobe=0))
    # Too dense in all (each share alone under the cap): rank 0 finds it after the gather, every rank raises.
    promptly(
        ConfigError, "edges per row", lambda: gcbs(max_avg_degree=4.0, target_degree=None, quantile=0.99)
    )
    # Options no rank can honour, refused by every rank before any collective.
    promptly(ConfigError, "exchange='read'", lambda: gcbs(exchange="ring"))
    promptly(ConfigError, "graph_method='exact' only", lambda: gcbs(key_block_size=64))
    promptly(ConfigError, "got 'ivf'", lambda: gcbs(graph_method="ivf"))


def _count_setup(ivf, ivf_threshold) -> dict[str, int]:
    """Rows this rank assigns to centroids and calibration rows it thresholds, counted as the set-up runs."""
    counts = {"assigned": 0, "calibrated": 0}
    nearest, sampled = ivf._nearest, ivf_threshold._SampledEdges.__init__

    def counted_nearest(matrix, *args):
        counts["assigned"] += len(matrix)
        return nearest(matrix, *args)

    def counted_sampled(self, rows, key_t, ids, *args):
        counts["calibrated"] += len(ids)
        sampled(self, rows, key_t, ids, *args)

    ivf._nearest, ivf_threshold._SampledEdges.__init__ = counted_nearest, counted_sampled
    return counts


def _check_setup_shared(counts: dict[str, int], name: str, world: int) -> None:
    everyone: list = [None] * world
    dist.all_gather_object(everyone, dict(counts))
    assigned = [c["assigned"] for c in everyone]
    assert sum(assigned) == 2 * N and min(assigned) > 0, (name, everyone)  # rows and keys once, in all
    calibrated = [c["calibrated"] for c in everyone]
    if name == "calibrated":
        assert sum(calibrated) == 500 and min(calibrated) > 0, everyone
    else:
        assert sum(calibrated) == 0, everyone


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import hardbatch.graph.ivf as ivf
    import hardbatch.graph.ivf_threshold as ivf_threshold
    from hardbatch.mining.distributed import mine_gcbs_distributed

    torch.set_num_threads(1)
    # Blocks small enough that every rank gets some of the set-up (the one-process mine uses them too).
    ivf._ASSIGN_ROWS, ivf._MEAN_GROUPS, ivf_threshold._CALIBRATION_ROWS = 128, 3, 32
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=TIMEOUT))  # fmt: skip
    try:
        q = np.load(os.path.join(out_dir, "q.npy"), mmap_mode="r")
        p = np.load(os.path.join(out_dir, "p.npy"), mmap_mode="r")
        if world == 2:
            _failure_checks(rank, q, p)
        counts = _count_setup(ivf, ivf_threshold)
        for name, options in RUNS.items():
            counts.update(assigned=0, calibrated=0)
            result = mine_gcbs_distributed(q, p, 20, **options)
            _check_setup_shared(counts, name, world)
            if rank == 0:
                single = mine_gcbs(q, p, 20, **options)
                for tag, run in (("spread", result), ("single", single)):
                    np.save(os.path.join(out_dir, f"{name}-{tag}-order.npy"), run.order)
                    with open(os.path.join(out_dir, f"{name}-{tag}.json"), "w") as handle:
                        json.dump(
                            {"threshold": run.threshold, "stats": run.stats, "params": run.params}, handle
                        )
            else:
                assert result is None
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_spread_ivf_threshold_graph_gives_the_one_process_refresh(tmp_path, world):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    q, p = _data()
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "p.npy", p)
    mp.spawn(_worker, args=(world, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=world, join=True)
    for name in RUNS:
        spread_order = np.load(tmp_path / f"{name}-spread-order.npy")
        np.testing.assert_array_equal(spread_order, np.load(tmp_path / f"{name}-single-order.npy"))
        spread = json.loads((tmp_path / f"{name}-spread.json").read_text())
        single = json.loads((tmp_path / f"{name}-single.json").read_text())
        assert spread["threshold"] == single["threshold"]
        assert spread["params"].pop("world_size") == world and spread["params"] == single["params"]
        info, alone = spread["stats"].pop("graph_search"), single["stats"].pop("graph_search")
        assert spread["stats"] == single["stats"], name  # nnz, degrees, bandwidth, batch edge fractions
        assert info["world_size"] == world
        for key in ("nlist", "nprobe", "exact_fallback", "searched_fraction", "calibration", "precision"):
            assert info.get(key) == alone.get(key), (name, key)
        if name == "fallback":
            assert info["exact_fallback"] and info["searched_fraction"] == 1.0
        else:  # every rank thresholded a share of the groups
            assert not info["exact_fallback"] and info["searched_fraction"] < 0.5
            assert len(info["rank_products"]) == world and min(info["rank_products"]) > 0
        if name == "calibrated":
            assert info["calibrated_recall"] >= 0.9 and len(info["calibration"]) >= 1
