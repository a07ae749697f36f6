from __future__ import annotations

import pytest

from hardbatch.errors import ConfigError, HardbatchError
from hardbatch.samplers.base import HardBatchSampler


class Sequential(HardBatchSampler):
    rng_salt = 99

    def _epoch_batches(self, epoch):
        order = self.rng(epoch).permutation(self.num_examples).tolist()
        return [order[i : i + self.batch_size] for i in range(0, self.num_examples, self.batch_size)]


class Broken(HardBatchSampler):
    def _epoch_batches(self, epoch):
        return [[0, 1], [1, 2]]


def test_full_batches_cut_to_world_size():
    sampler = Sequential(num_examples=50, batch_size=4, world_size=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 12  # 12 full batches, already a multiple of 3
    assert all(len(b) == 4 for b in batches)


def test_short_last_batch_only_without_drop_last():
    sampler = Sequential(num_examples=10, batch_size=4, drop_last=False)
    batches = list(sampler)
    assert [len(b) for b in batches] == [4, 4, 2] and len(sampler) == 3
    assert sorted(i for b in batches for i in b) == list(range(10))


def test_epoch_advances_and_resume_gives_rest():
    sampler = Sequential(num_examples=40, batch_size=4, seed=3)
    first = list(sampler)
    second = list(sampler)
    assert first != second and sampler.epoch == 2
    it = iter(sampler)
    taken = [next(it) for _ in range(3)]
    state = sampler.state_dict()
    assert state["epoch"] == 2 and state["batches_done"] == 3
    fresh = Sequential(num_examples=40, batch_size=4, seed=3)
    fresh.load_state_dict(state)
    assert taken + list(fresh) == sampler.batches(2)


def test_errors():
    with pytest.raises(ConfigError, match="larger than the data"):
        Sequential(num_examples=3, batch_size=4)
    with pytest.raises(HardbatchError, match="repeated an index"):
        list(Broken(num_examples=10, batch_size=2))
    with pytest.raises(ConfigError, match="batch_size"):
        Sequential(num_examples=10, batch_size=2).load_state_dict({"epoch": 0, "batch_size": 3})
