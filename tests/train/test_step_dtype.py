"""StepRunner hands the encoder's embeddings to the loss in their own dtype (no fp32 cast before the loss)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import hardbatch.losses
from hardbatch.train.step import StepRunner


class _Encoder(torch.nn.Module):
    """Stands in for DualEncoder: one (rows, 3) embedding per feature tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, *features):
        return tuple(self.linear(f) for f in features)


@pytest.mark.parametrize("gradcache_chunk", [None, 2])
def test_bf16_autocast_embeddings_reach_the_loss_as_bf16(monkeypatch, gradcache_chunk):
    seen = []
    real = hardbatch.losses.info_nce

    def spy(query, key, *args, **kwargs):
        seen.append((query.dtype, key.dtype))
        return real(query, key, *args, **kwargs)

    monkeypatch.setattr(hardbatch.losses, "info_nce", spy)
    config = SimpleNamespace(scale=20.0, symmetric=True, gradcache_chunk=gradcache_chunk)
    ctx = SimpleNamespace(group=None, device=torch.device("cpu"))
    encoder = _Encoder()
    runner = StepRunner(encoder, config, ctx, autocast_dtype=torch.bfloat16)
    batch = SimpleNamespace(query=torch.randn(5, 4), document=torch.randn(5, 4), query_ids=None, key_ids=None)
    loss = runner.step(batch)
    assert seen == [(torch.bfloat16, torch.bfloat16)]
    assert loss > 0 and encoder.linear.weight.grad is not None
    assert encoder.linear.weight.grad.dtype == torch.float32
