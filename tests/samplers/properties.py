"""The property suite every hardbatch batch sampler must pass (reusable: plug in any sampler factory).

Usage from a test module::

    from properties import check_sampler_properties  # tests/samplers is on sys.path under pytest

    def make(*, seed, world_size, drop_last):
        return MySampler(dataset, batch_size=8, seed=seed, world_size=world_size, drop_last=drop_last)

    def test_my_sampler():
        check_sampler_properties(make)

``make_sampler`` must build a *fresh* sampler each call (same data every time). Hypothesis draws the seed,
world size (1-3), ``drop_last``, epoch and a resume point, and checks:

* sizes: every batch has exactly ``batch_size`` indices (a single short last batch only without
  ``drop_last`` on one process); with ``world_size = P`` the number of batches is a multiple of P;
  ``len(sampler)`` equals the number of batches yielded;
* coverage: no index twice in an epoch, all in range, at most ``max_uncovered(sampler)`` left out
  (default: the base's tail, 0 without ``drop_last`` on one process, else < ``batch_size · P``);
* rank identity: two instances with the same arguments (world size 2) yield the same stream over two
  consecutive epochs (the second reached by self-advancing, as under accelerate);
* epoch variation: consecutive epochs differ (unless ``varies_with_epoch=False``);
* seed determinism: ``set_epoch(e)`` then iterating gives ``batches(e)``;
* resume: ``state_dict()`` taken mid-epoch and loaded into a fresh sampler yields exactly the rest of the
  epoch, and then the next epoch;
* torch: a ``DataLoader(batch_sampler=sampler)`` yields the same batches.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardbatch.samplers.base import HardBatchSampler

__all__ = ["MakeSampler", "base_remainder", "check_sampler_properties"]

MakeSampler = Callable[..., HardBatchSampler]


def _examples(ci_cap: int | None) -> int:
    """The profile's example count, capped at ``ci_cap`` except under the ``slow`` profile (make test-slow)."""
    profile = settings().max_examples
    if ci_cap is None or os.environ.get("HYPOTHESIS_PROFILE") == "slow":
        return profile
    return min(ci_cap, profile)


def base_remainder(sampler: HardBatchSampler) -> int:
    """Most examples the base may leave out: none on one process without drop_last, else < b · P."""
    if not sampler.full_batches_only:
        return 0
    return sampler.batch_size * sampler.world_size - 1


def _check_sizes(sampler: HardBatchSampler, batches: list[list[int]], expected_len: int) -> None:
    """``expected_len``: ``len(sampler)`` taken before the epoch was iterated (iteration advances the
    epoch, and a sampler's length may differ between epochs, e.g. the no-duplicates sampler's)."""
    b = sampler.batch_size
    name = type(sampler).__name__
    assert len(batches) == expected_len, (
        f"{name}: len()={expected_len} but {len(batches)} batches were yielded"
    )
    if sampler.full_batches_only:
        assert all(len(batch) == b for batch in batches), f"{name}: a batch is not of size {b}"
        assert len(batches) % sampler.world_size == 0, (
            f"{name}: {len(batches)} batches, world {sampler.world_size}"
        )
    else:
        assert all(len(batch) == b for batch in batches[:-1]), f"{name}: a batch before the last is short"
        assert not batches or 0 < len(batches[-1]) <= b


def _check_coverage(
    sampler: HardBatchSampler, batches: list[list[int]], max_uncovered: Callable[[HardBatchSampler], int]
) -> None:
    flat = [i for batch in batches for i in batch]
    name = type(sampler).__name__
    assert len(flat) == len(set(flat)), f"{name}: an index repeats within an epoch"
    assert all(isinstance(i, int) and 0 <= i < sampler.num_examples for i in flat)
    uncovered = sampler.num_examples - len(flat)
    assert uncovered <= max_uncovered(sampler), (
        f"{name}: {uncovered} examples left out, more than the documented {max_uncovered(sampler)}"
    )


def check_sampler_properties(
    make_sampler: MakeSampler,
    *,
    max_uncovered: Callable[[HardBatchSampler], int] = base_remainder,
    varies_with_epoch: bool = True,
    world_sizes: tuple[int, ...] = (1, 2, 3),
    max_examples: int | None = None,
) -> None:
    """Run the property suite on ``make_sampler(seed=, world_size=, drop_last=)`` (see the module docstring).

    ``max_examples`` caps the examples of an expensive sampler in CI; the ``slow`` profile ignores it.
    """

    @settings(
        max_examples=_examples(max_examples),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        database=None,
    )
    @given(
        seed=st.integers(0, 2**16),
        world_size=st.sampled_from(world_sizes),
        drop_last=st.booleans(),
        epoch=st.integers(0, 6),
        cut=st.floats(0.0, 1.0),
    )
    def run(seed: int, world_size: int, drop_last: bool, epoch: int, cut: float) -> None:
        sampler = make_sampler(seed=seed, world_size=world_size, drop_last=drop_last)
        sampler.set_epoch(epoch)
        expected_len = len(sampler)
        batches = list(sampler)
        assert len(batches) == expected_len
        _check_sizes(sampler, batches, expected_len)
        _check_coverage(sampler, batches, max_uncovered)
        assert sampler.epoch == epoch + 1, "a completed iteration must advance the epoch"
        assert batches == sampler.batches(epoch), "iteration must equal batches(epoch)"
        following_len = len(sampler)
        following = list(sampler)
        _check_sizes(sampler, following, following_len)
        _check_coverage(sampler, following, max_uncovered)
        if varies_with_epoch and len(batches) > 1:
            assert batches != following, "consecutive epochs gave the same batches"

        # Rank identity: a second instance (another rank) yields the same stream, epoch after epoch.
        twin_a = make_sampler(seed=seed, world_size=2, drop_last=drop_last)
        twin_b = make_sampler(seed=seed, world_size=2, drop_last=drop_last)
        for sampler_ in (twin_a, twin_b):
            sampler_.set_epoch(epoch)
        assert list(twin_a) + list(twin_a) == list(twin_b) + list(twin_b), "ranks disagree"

        # Resume mid-epoch from a state_dict into a fresh sampler.
        first = make_sampler(seed=seed, world_size=world_size, drop_last=drop_last)
        first.set_epoch(epoch)
        iterator = iter(first)
        done = int(cut * len(batches))
        taken = [next(iterator) for _ in range(done)]
        state = first.state_dict()
        assert state["epoch"] == epoch and state["batches_done"] == done
        resumed = make_sampler(seed=seed, world_size=world_size, drop_last=drop_last)
        resumed.load_state_dict(state)
        rest = list(resumed)
        assert taken + rest == batches, "resume did not yield exactly the rest of the epoch"
        assert resumed.epoch == epoch + 1
        assert list(resumed) == following, "after a resumed epoch the next epoch must follow"

        # torch DataLoader with batch_sampler=
        loader_sampler = make_sampler(seed=seed, world_size=world_size, drop_last=drop_last)
        loader_sampler.set_epoch(epoch)
        dataset = torch.arange(loader_sampler.num_examples)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=loader_sampler)
        assert [t.tolist() for t in loader] == batches

    run()


def planted_embeddings(
    num_topics: int, per_topic: int, dim: int = 16, noise: float = 0.3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Query/positive embeddings with planted topics (rows shuffled): ``(query, positive, topic_of_row)``."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_topics, dim))
    topic = np.repeat(np.arange(num_topics), per_topic)
    rng.shuffle(topic)
    query = centers[topic] + noise * rng.normal(size=(topic.size, dim))
    positive = query + 0.5 * noise * rng.normal(size=query.shape)
    return query.astype(np.float32), positive.astype(np.float32), topic
