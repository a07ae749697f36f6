from __future__ import annotations

import itertools

import pytest
import torch

from hardbatch.errors import ConfigError
from hardbatch.train.schedule import warmup_linear_schedule, warmup_steps_for


def _lrs(total: int, warmup: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_linear_schedule(opt, total, warmup)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_then_linear_decay_never_wastes_a_step():
    assert _lrs(4, 2) == [0.5, 1.0, 1.0, 0.5]
    lrs = _lrs(10, 3)
    assert all(lr > 0 for lr in lrs)
    assert lrs[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(a >= b for a, b in itertools.pairwise(lrs[2:]))


def test_single_step_and_no_warmup():
    assert _lrs(1, 1) == [1.0]
    assert _lrs(3, 0) == pytest.approx([1.0, 2 / 3, 1 / 3])


def test_warmup_steps_for_rounds_up_and_validates():
    assert warmup_steps_for(10, 0.1) == 1
    assert warmup_steps_for(2, 0.1) == 1
    assert warmup_steps_for(5, 0.0) == 0
    with pytest.raises(ConfigError):
        warmup_steps_for(5, 1.5)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ConfigError):
        warmup_linear_schedule(opt, 0, 0)
