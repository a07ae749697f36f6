"""A learnable logit scale keeps its gradient past the bound and is clamped on the parameter after a step."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from hardbatch.errors import ConfigError
from hardbatch.losses import InfoNCELoss
from hardbatch.losses.module import clamp_logit_scales


def _pair(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(6, 5, generator=gen), dim=-1)
    k = F.normalize(q + 0.3 * torch.randn(6, 5, generator=gen), dim=-1)
    return q, k


def test_gradient_is_nonzero_past_the_bound():
    loss_fn = InfoNCELoss(scale=20.0, learnable_scale=True, max_scale=50.0)
    with torch.no_grad():
        loss_fn.logit_scale.fill_(math.log(80.0))  # past max_scale, as after an overshooting step
    q, k = _pair()
    loss_fn(q, k).backward()
    grad = float(loss_fn.logit_scale.grad)
    assert grad != 0.0
    # The forward uses the parameter's own value (80), not a clamped one.
    s = torch.tensor(80.0, requires_grad=True)
    from hardbatch.losses import info_nce

    info_nce(q, k, scale=s).backward()
    assert grad == pytest.approx(float(s.grad) * 80.0, rel=1e-5)  # d/d log s = s · d/ds


def test_clamp_happens_after_the_step_not_before():
    loss_fn = InfoNCELoss(scale=49.0, learnable_scale=True, max_scale=50.0)
    opt = torch.optim.SGD(loss_fn.parameters(), lr=1.0)
    q, k = _pair(1)
    # Push the scale up: minimise the negative loss (anything with d/d logit_scale < 0 does).
    (-loss_fn(q, k)).backward()
    opt.step()
    assert float(loss_fn.logit_scale.detach()) > math.log(50.0)  # the step itself is not clamped
    assert clamp_logit_scales(torch.nn.ModuleList([loss_fn])) == 1
    assert float(loss_fn.logit_scale.detach()) == pytest.approx(math.log(50.0))
    with torch.no_grad():
        loss_fn.logit_scale.fill_(-3.0)
    assert float(loss_fn.clamp_().scale) == pytest.approx(1.0)  # min_scale


def test_fixed_scale_and_out_of_range_initial_scale():
    assert clamp_logit_scales(torch.nn.ModuleList([InfoNCELoss(scale=5.0)])) == 0
    with pytest.raises(ConfigError, match="outside"):
        InfoNCELoss(scale=200.0, learnable_scale=True, max_scale=100.0)


def test_trainer_clamps_after_the_optimizer_step():
    """Trainer._train_step: optimizer.step, then the clamp, on the model's learnable scales."""
    from hardbatch.train.trainer import Trainer

    loss_fn = InfoNCELoss(scale=10.0, learnable_scale=True, max_scale=20.0)
    model = torch.nn.ModuleDict({"head": torch.nn.Linear(2, 2), "loss": loss_fn})
    events = []

    class Optimizer:
        def step(self):
            events.append("step")
            with torch.no_grad():
                loss_fn.logit_scale.fill_(math.log(1000.0))

        def zero_grad(self, set_to_none=True):
            events.append("zero_grad")

    fake = SimpleNamespace(
        _collate=lambda indices: None,
        runner=SimpleNamespace(step=lambda batch: 1.5),
        config=SimpleNamespace(max_grad_norm=None),
        optimizer=Optimizer(),
        scheduler=SimpleNamespace(step=lambda: events.append("sched")),
        model=model,
        ctx=SimpleNamespace(mean=lambda value: value),
    )
    assert Trainer._train_step(fake, [0, 1]) == 1.5
    assert events == ["step", "sched", "zero_grad"]
    assert float(loss_fn.scale) == pytest.approx(20.0)
