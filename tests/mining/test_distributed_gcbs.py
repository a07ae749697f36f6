"""Distributed GCBS with key blocks equals one process, and a failing rank stops every rank at once (gloo).

One spawn of 2 ranks serves every check:

* failures: a rank > 0 that fails while building its slice of the graph (a user error, or any other
  exception), a rank > 0 whose embeddings have another shape than rank 0's, rank 0 failing before the graph
  (a bad batch size) and after it (a graph too dense), a rank > 0 with a bad option of its own (a budget too
  small: an error, not a "too dense" slice), and a rank > 0 failing while ranking B3 queries, each
  raise on **every** rank, well before the process group's (short) timeout: the same error class and message
  for a user error, a RuntimeError naming the failed rank otherwise. Without the shared failure report a
  rank left waiting in the gather (or a mismatched collective) times out, and the check fails;
* after them (the process group is still in step), ``mine_gcbs_distributed(key_block_size=B)`` and
  ``memory_budget=...`` on memory-mapped inputs give the order, batches, threshold and graph statistics of
  a single-process unblocked :func:`~hardbatch.mining.gcbs.mine_gcbs`.
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

CASES = {
    "blocked_sampled": dict(target_degree=8, sample_size=4000, seed=3, key_block_size=37),
    "budget_exact_quantile": dict(quantile=0.99, seed=0, memory_budget=340_000),
    "ring_blocked": dict(quantile=0.99, seed=0, key_block_size=37, exchange="ring"),
}
OPTIONS = dict(device="cpu", chunk_size=64, precision="fp32", show_progress=False)


def _data():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(15, 24))
    q = centres[rng.integers(0, 15, 301)] + 0.4 * rng.normal(size=(301, 24))  # odd N: uneven shards
    p = q + 0.4 * rng.normal(size=q.shape)
    return (3 * q).astype(np.float32), p.astype(np.float32)


def _failure_checks(rank: int, q, p) -> None:
    import hardbatch.graph.threshold as threshold
    import hardbatch.mining.distributed as distributed
    from hardbatch.mining.distributed import mine_b3_distributed, mine_gcbs_distributed

    gcbs = lambda query=q, positive=p, **kw: mine_gcbs_distributed(  # noqa: E731
        query, positive, 20, target_degree=8, **OPTIONS, **kw
    )
    original = threshold.threshold_graph
    # A rank > 0 fails while building its slice: a user error travels as itself...
    if rank == 1:
        threshold.threshold_graph = failing("row 7: unreadable embedding")
    promptly(DataError, "row 7: unreadable embedding", gcbs)
    # ... any other exception as a RuntimeError naming the rank (the failing rank raises its own).
    if rank == 1:
        threshold.threshold_graph = failing("out of memory")
    expected = "out of memory" if rank == 1 else "rank 1 failed while building its slice of the GCBS graph"
    promptly(RuntimeError, expected, gcbs)
    # The same in a ring, where the failing rank still passes its shards on until the ring is done.
    if rank == 1:
        threshold.threshold_graph = failing("row 9: unreadable embedding")
    promptly(DataError, "row 9: unreadable embedding", lambda: gcbs(exchange="ring"))
    threshold.threshold_graph = original
    promptly(DataError, r"positive embeddings on rank 1: shape \(301, 20\)",
              lambda: gcbs(positive=np.asarray(p)[:, :20] if rank == 1 else p, exchange="ring"))  # fmt: skip
    promptly(ConfigError, "edges per row", lambda: gcbs(max_avg_degree=2.0, exchange="ring"))
    # A rank > 0 whose file differs from rank 0's (a truncated copy on another node).
    promptly(DataError, r"positive embeddings on rank 1: shape \(300, 24\)",
              lambda: gcbs(positive=p[:-1] if rank == 1 else p))  # fmt: skip
    # Rank 0 fails before the graph, and after it: every rank raises its error, none returns None.
    promptly(ConfigError, "larger than the data", lambda: mine_gcbs_distributed(q, p, 500, **OPTIONS))
    promptly(ConfigError, "edges per row", lambda: gcbs(max_avg_degree=2.0))
    # A rank's own bad option is that error, not taken for "too dense" (only the density cap is).
    promptly(ConfigError, "too small for the threshold graph",
              lambda: gcbs(memory_budget="16KiB" if rank == 1 else None))  # fmt: skip
    # B3: a rank > 0 that fails while ranking its shard of queries stops every rank too.
    search = distributed.knn_exact
    if rank == 1:
        distributed.knn_exact = failing("row 3: cannot rank")
    promptly(DataError, "row 3: cannot rank", lambda: mine_b3_distributed(
        q, p, batch_size=20, cluster_size=10, skip=2, window=8, device="cpu", show_progress=False))  # fmt: skip
    distributed.knn_exact = search
    # The ring: a rank failing on a shard still passes its shards on, then every rank raises (rank 1's
    # user error as itself; rank 0's bug as a RuntimeError naming it); shards of another width never travel.
    b3_ring = lambda positive=p: mine_b3_distributed(  # noqa: E731
        q, positive, batch_size=20, cluster_size=10, skip=2, window=8, device="cpu", show_progress=False,
        exchange="ring",
    )  # fmt: skip
    for failing_rank, error, message in (
        (1, DataError, "row 3: cannot rank"),
        (0, RuntimeError, "shard bug"),
    ):
        if rank == failing_rank:
            distributed.knn_exact = failing(message)
        expected = message if rank == failing_rank or error is DataError else "rank 0 failed while ranking"
        promptly(error, expected, b3_ring)
        distributed.knn_exact = search
    promptly(DataError, "positive shards disagree in shape",
              lambda: b3_ring(np.asarray(p)[:, :20] if rank == 1 else p))  # fmt: skip
    promptly(ConfigError, "exchange must be one of",
              lambda: mine_b3_distributed(q, p, batch_size=20, cluster_size=10, exchange="broadcast"))  # fmt: skip


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from hardbatch.mining.distributed import mine_gcbs_distributed

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
        timeout=timedelta(seconds=TIMEOUT),
    )  # fmt: skip
    try:
        q = np.load(os.path.join(out_dir, "q.npy"), mmap_mode="r")
        p = np.load(os.path.join(out_dir, "p.npy"), mmap_mode="r")
        _failure_checks(rank, q, p)
        for name, options in CASES.items():
            result = mine_gcbs_distributed(q, p, 20, **OPTIONS, **options)
            if rank == 0:
                assert result.params["world_size"] == world and result.stats["key_blocks"] > 1
                np.save(os.path.join(out_dir, f"{name}-order.npy"), result.order)
                with open(os.path.join(out_dir, f"{name}.json"), "w") as handle:
                    json.dump({"threshold": result.threshold, "stats": result.stats}, handle)
            else:
                assert result is None
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_key_blocked_distributed_gcbs_and_failures_on_every_rank(tmp_path):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    q, p = _data()
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "p.npy", p)
    mp.spawn(_worker, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    for name, options in CASES.items():
        options = {
            k: v for k, v in options.items() if k not in ("key_block_size", "memory_budget", "exchange")
        }
        single = mine_gcbs(q, p, 20, **OPTIONS, **options)  # all positives resident, one process
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}-order.npy"), single.order)
        saved = json.loads((tmp_path / f"{name}.json").read_text())
        assert saved["threshold"] == single.threshold
        stats = {k: v for k, v in saved["stats"].items() if k not in ("key_block_size", "key_blocks")}
        assert stats == json.loads(json.dumps(single.stats))
