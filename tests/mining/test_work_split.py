"""``WorkSplit``: each block computed by one rank, every rank gets all of them in order; failures reach every rank.

The distributed IVF set-up (``tests/mining/test_distributed_ivf.py``) relies on it: the list and group
assignment, group means and calibration rows are its blocks. Here with 2 and 3 gloo ranks: the gathered
result against the one-process one (values, trailing shape, dtype), which rank ran which block (each block
once in all, the contiguous runs :meth:`WorkSplit.owners` names, the same owners every call), fewer blocks
than ranks, ``once`` (rank 0 alone), and failures inside a block, on rank 0 alone, and between two steps.
Every rank computing every block, blocks gathered out of order, a failure left unreported or reported twice
(a hang, caught by the group's timeout): each fails here.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from failing_ranks import TIMEOUT, promptly

from hardbatch.distributed import WorkSplit, raise_together
from hardbatch.errors import DataError

pytestmark = pytest.mark.distributed


def _rows(lo: int, hi: int) -> np.ndarray:
    """(hi - lo, 3) float32 rows whose values name their item."""
    return np.arange(lo, hi, dtype=np.float32)[:, None] * np.array([1.0, -2.0, 0.5], dtype=np.float32)


def _blocks_and_owners(rank: int, world: int) -> None:
    split = WorkSplit("testing", across_ranks=True)
    ran: list[tuple[int, int]] = []

    def work(lo: int, hi: int) -> np.ndarray:
        ran.append((lo, hi))
        return _rows(lo, hi)

    got = split.blocks(work, 10, 3)
    assert got.dtype == np.float32 and got.shape == (10, 3)
    np.testing.assert_array_equal(got, WorkSplit().blocks(_rows, 10, 3))
    everyone: list = [None] * world
    dist.all_gather_object(everyone, ran)
    starts = sorted(lo for calls in everyone for lo, _ in calls)
    assert starts == [0, 3, 6, 9], everyone  # every block once in all
    owners = split.owners(10, 3)
    assert [lo // 3 for lo, _ in ran] == np.flatnonzero(owners == rank).tolist()
    assert np.all(np.diff(owners) >= 0) and len(set(owners.tolist())) == min(world, 4)
    again: list[tuple[int, int]] = []
    split.blocks(lambda lo, hi: again.append((lo, hi)) or _rows(lo, hi), 10, 3)
    assert again == ran  # the same blocks on the same rank: per-block state may stay here

    # One block for W ranks: rank 0 computes it, every rank receives it (int32 kept).
    single = split.blocks(lambda lo, hi: np.arange(lo, hi, dtype=np.int32) + 100 * rank, 4, 8)
    assert single.dtype == np.int32 and single.tolist() == [0, 1, 2, 3]

    # once: rank 0's result everywhere, computed on rank 0 only.
    calls: list[int] = []
    assert split.once(lambda: calls.append(rank) or {"rank": rank}) == {"rank": 0}
    assert calls == ([0] if rank == 0 else [])

    # A report carries each rank's payload back in rank order (the blocks' shapes travel this way).
    assert raise_together(None, "testing", payload={"rank": rank}) == [{"rank": r} for r in range(world)]


def _failures(rank: int, world: int) -> None:
    def bad_on(failing_rank: int, message: str):
        def work(lo: int, hi: int) -> np.ndarray:
            if rank == failing_rank:
                raise DataError(message) if message.startswith("row") else RuntimeError(message)
            return _rows(lo, hi)

        return work

    split = WorkSplit("testing", across_ranks=True)
    # A user error inside rank 1's block travels as itself...
    promptly(DataError, "row 3: NaN", lambda: split.blocks(bad_on(1, "row 3: NaN"), 12, 2))
    # ... anything else as a RuntimeError naming the rank (the failing rank raises its own).
    expected = "out of memory" if rank == world - 1 else f"rank {world - 1} failed while testing"
    promptly(RuntimeError, expected, lambda: WorkSplit("testing", across_ranks=True).blocks(
        bad_on(world - 1, "out of memory"), 12, 2))  # fmt: skip
    # once fails on rank 0: every rank raises.
    promptly(DataError, "row 0: empty", lambda: WorkSplit("testing", across_ranks=True).once(
        lambda: (_ for _ in ()).throw(DataError("row 0: empty"))))  # fmt: skip

    # Rank 1 fails between two steps: the others raise at their next step, and its finish() joins that
    # step; the ranks whose step raised finish() without another collective (no rank waits on another).
    def run() -> None:
        shared = WorkSplit("testing", across_ranks=True)
        failure = None
        try:
            shared.blocks(_rows, 6, 2)
            if rank == 1:
                raise DataError("row 9: between steps")
            shared.blocks(_rows, 6, 2)
        except Exception as exc:
            failure = exc
        shared.finish(failure)

    promptly(DataError, "row 9: between steps", run)
    # After every failure the ranks are still in step: a plain step succeeds.
    assert WorkSplit("testing", across_ranks=True).blocks(_rows, 5, 2).shape == (5, 3)


def _worker(rank: int, world: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=TIMEOUT))  # fmt: skip
    try:
        _blocks_and_owners(rank, world)
        _failures(rank, world)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_blocks_are_dealt_once_and_gathered_in_order(tmp_path, world):
    mp.spawn(_worker, args=(world, str(tmp_path / "rendezvous")), nprocs=world, join=True)


def test_alone_every_block_runs_here_in_order():
    ran = []
    split = WorkSplit("testing", across_ranks=True)  # no process group: alone
    got = split.blocks(lambda lo, hi: ran.append(lo) or _rows(lo, hi), 7, 3)
    assert ran == [0, 3, 6] and got.shape == (7, 3) and got[6, 1] == -12.0
    assert split.owners(7, 3).tolist() == [0, 0, 0]
    assert split.once(lambda: 5) == 5
    with pytest.raises(DataError, match="row 1"):
        split.finish(DataError("row 1"))
    split.finish(None)
