"""B3 with ``knn="ivf_torch"`` spread over gloo ranks writes the one-process plan; failures reach every rank.

The ranks build each source group's IVF layout together (the k-means iterations, list and group
assignment and the calibration's sampled rows in blocks shared by the ranks: every rank must do a share and
the shares must add up to one set-up's); the IVF groups are dealt to the ranks by their products and each
rank searches its groups; rank 0 places the rows by id. Rank 0 also mines the same inputs with the one-process :func:`mine_b3` in its own process (same
threads, so the same k-means), and the parent compares the plans exactly. A group searched twice or never
(the row check asserts), rows placed by position instead of id, a layout rebuilt per rank with another
seed or another ``nprobe``, the exact fallback's rows misplaced: each changes the windows and so the
clusters; a layout every rank builds alone gives the right plan but fails the shares. Runs: fixed ``nprobe`` (global), ``nprobe`` calibrated to a recall target per source group, and
the exact fallback (``nprobe`` = ``nlist``: every list, the exact search is cheaper).
"""

from __future__ import annotations

import os
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from failing_ranks import TIMEOUT, failing, promptly

from hardbatch.errors import ConfigError, DataError
from hardbatch.mining.plan import BatchPlan

pytestmark = pytest.mark.distributed

N, DIM = 900, 16
COMMON = dict(batch_size=20, cluster_size=10, skip=3, window=12, seed=2, device="cpu", knn="ivf_torch",
              precision="fp32", show_progress=False, recall_sample=200)  # fmt: skip


def _data():
    rng = np.random.default_rng(7)
    centres = 3 * rng.normal(size=(30, DIM))
    topic = rng.integers(0, 30, N)
    q = (centres[topic] + rng.normal(size=(N, DIM))).astype(np.float32)
    p = (centres[topic] + rng.normal(size=(N, DIM))).astype(np.float32)
    sources = np.where(np.arange(N) % 3 == 0, "a", "b")  # groups of 300 and 600, interleaved ids
    return q, p, sources


def _runs():
    sources = _data()[2]
    return {
        "fixed": dict(COMMON, faiss_options={"nlist": 24, "nprobe": 4}),
        "calibrated": dict(COMMON, sources=sources, recall_target=0.8, faiss_options={"nlist": 16}),
        "fallback": dict(COMMON, faiss_options={"nlist": 8, "nprobe": 8}),
        "doubled": dict(COMMON, recall_target=0.8),  # default nlist: a second k-means of 2 × 23 lists
    }


def _double_the_default_lists_once(ivf) -> None:
    """The rule of ``ivf.more_lists`` as if the search dwarfed the k-means (it does not at this size): each
    rank must then train and calibrate a second layout with the others, and all keep the same one."""
    ivf.more_lists = lambda lists, rows, keys, products: 2 * lists if lists == ivf.auto_lists(keys) else None


def _failure_checks(rank: int, q, p) -> None:
    import hardbatch.mining.distributed as distributed
    from hardbatch.mining.distributed import mine_b3_distributed as mine

    options = _runs()["fixed"]
    original = distributed.search_groups
    # A rank > 0 fails while searching its IVF groups: a user error travels as itself...
    if rank == 1:
        distributed.search_groups = failing("row 5: unreadable embedding")
    promptly(DataError, "row 5: unreadable embedding", lambda: mine(q, p, **options))
    # ... any other exception as a RuntimeError naming the rank (the failing rank raises its own).
    if rank == 1:
        distributed.search_groups = failing("out of memory")
    expected = "out of memory" if rank == 1 else "rank 1 failed while ranking its shard of B3 queries"
    promptly(RuntimeError, expected, lambda: mine(q, p, **options))
    distributed.search_groups = original
    # Rank 1 reads a truncated copy of the positives: found from rank 0's shape, before any search.
    promptly(DataError, r"positive embeddings on rank 1: shape \(899, 16\)",
             lambda: mine(q, p[:-1] if rank == 1 else p, **options))  # fmt: skip
    # Rank 0's layout fails (a bad nprobe, found when the layout is built): every rank raises it.
    bad = {**options, "faiss_options": {"nlist": 24, "nprobe": 0}}
    promptly(ConfigError, "nprobe must be a positive integer", lambda: mine(q, p, **bad))
    # Options no rank can honour, raised by every rank before any collective.
    promptly(ConfigError, "exchange='read'", lambda: mine(q, p, exchange="ring", **options))
    promptly(ConfigError, "knn='exact' only", lambda: mine(q, p, key_block_size=64, **options))
    promptly(ConfigError, "got 'hnsw'", lambda: mine(q, p, **{**options, "knn": "hnsw"}))


def _count_setup_rows(ivf) -> dict[str, int]:
    """Rows this rank assigns to centroids and calibrates, counted as the set-up runs."""
    counts = {"assigned": 0, "calibrated": 0}
    nearest, pools = ivf._nearest, ivf._sample_pools

    def counted_nearest(matrix, *args):
        counts["assigned"] += len(matrix)
        return nearest(matrix, *args)

    def counted_pools(rows, key_t, ids, *args):
        counts["calibrated"] += len(ids)
        return pools(rows, key_t, ids, *args)

    ivf._nearest, ivf._sample_pools = counted_nearest, counted_pools
    return counts


def _check_setup_shared(counts: dict[str, int], name: str, world: int) -> None:
    """Every rank assigned and calibrated a share of the rows, and the shares add up to one set-up's."""
    everyone: list = [None] * world
    dist.all_gather_object(everyone, dict(counts))
    assigned = [c["assigned"] for c in everyone]
    layouts = 2 if name == "doubled" else 1
    assert sum(assigned) == layouts * 2 * N and min(assigned) > 0, (
        name,
        everyone,
    )  # rows and keys, once each
    if name == "calibrated":
        calibrated = [c["calibrated"] for c in everyone]
        # Per source group min(500, rows) sampled rows (groups of 300 and 600).
        assert sum(calibrated) == 300 + 500 and min(calibrated) > 0, everyone


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import hardbatch.graph.ivf as ivf
    from hardbatch.mining import mine_b3
    from hardbatch.mining.distributed import mine_b3_distributed

    torch.set_num_threads(1)
    # Blocks small enough that the test's set-up has some for every rank (the one-process mine uses them too).
    ivf._ASSIGN_ROWS, ivf._MEAN_GROUPS, ivf._CALIBRATION_ROWS = 128, 3, 32
    _double_the_default_lists_once(ivf)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=TIMEOUT))  # fmt: skip
    try:
        q = np.load(os.path.join(out_dir, "q.npy"), mmap_mode="r")
        p = np.load(os.path.join(out_dir, "p.npy"), mmap_mode="r")
        if world == 2:
            _failure_checks(rank, q, p)
        counts = _count_setup_rows(ivf)
        for name, options in _runs().items():
            counts.update(assigned=0, calibrated=0)  # rank 0's one-process mine counted too
            plan = mine_b3_distributed(q, p, **options)
            _check_setup_shared(counts, name, world)
            if rank == 0:
                plan.save(os.path.join(out_dir, f"{name}-{world}.parquet"))
                mine_b3(q, p, **options).save(os.path.join(out_dir, f"{name}-single.parquet"))
            else:
                assert plan is None
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_spread_ivf_search_gives_the_one_process_plan(tmp_path, world):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    q, p, _ = _data()
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "p.npy", p)
    mp.spawn(_worker, args=(world, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=world, join=True)
    for name in _runs():
        spread = BatchPlan.load(tmp_path / f"{name}-{world}.parquet")
        single = BatchPlan.load(tmp_path / f"{name}-single.parquet")
        np.testing.assert_array_equal(spread.clusters, single.clusters)
        np.testing.assert_array_equal(spread.remainder, single.remainder)
        assert spread.params["world_size"] == world
        for key in ("knn_window_recall", "knn_recall"):
            assert spread.stats[key] == single.stats[key], (name, key)
        infos, single_infos = spread.stats["knn_info"], single.stats["knn_info"]
        infos = infos if isinstance(infos, list) else [infos]
        single_infos = single_infos if isinstance(single_infos, list) else [single_infos]
        assert len(infos) == len(single_infos) == (2 if name == "calibrated" else 1)
        for info, alone in zip(infos, single_infos):
            assert info["world_size"] == world
            for key in ("nlist", "nprobe", "exact_fallback", "searched_fraction", "calibration"):
                assert info.get(key) == alone.get(key), (name, key)
            if name == "doubled":  # the same tries, whichever the ranks kept
                fields = ("nlist", "nprobe", "calibrated_recall", "searched_fraction")
                spread_tries, alone_tries = (
                    [{field: step[field] for field in fields} for step in each["nlist_tries"]]
                    for each in (info, alone)
                )
                assert [step["nlist"] for step in spread_tries] == [23, 46] and spread_tries == alone_tries
            if name == "fallback":
                assert info["exact_fallback"] and info["searched_fraction"] == 1.0
            else:  # every rank searched a share of the groups, and the shares add up
                assert not info["exact_fallback"] and info["searched_fraction"] < 0.5
                assert len(info["rank_products"]) == world and min(info["rank_products"]) > 0
    calibrated = BatchPlan.load(tmp_path / f"calibrated-{world}.parquet").stats["knn_info"]
    assert all(info["calibration"] and info["calibrated_recall"] >= 0.8 for info in calibrated)


def test_deal_by_cost_balances_and_is_deterministic():
    from hardbatch.mining.distributed import assign_shards, deal_by_cost

    costs = np.random.default_rng(0).integers(1, 1000, 200)
    owner = deal_by_cost(costs, 3)
    loads = np.bincount(owner, weights=costs, minlength=3)
    assert loads.max() - loads.min() <= costs.max()  # greedy LPT: within one item of level
    np.testing.assert_array_equal(owner, deal_by_cost(costs.copy(), 3))
    assert deal_by_cost([7, 7, 7, 7], 2).tolist() == [0, 1, 0, 1]  # ties: lower index, lower rank first
    assert deal_by_cost([], 2).tolist() == []
    assert assign_shards([100, 100, 100, 50, 50], 2) == [0, 1, 0, 1, 1]  # by Σ s², as before
