"""``StepRunner``: the loss it computes follows the run's settings, and bf16 autocast wraps the forward.

(The end-to-end check that training learns is test_learns; these pin what a default configuration
cannot: a non-default scale, the symmetric loss, duplicate masking and the autocast dtype.)
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from hardbatch.losses import reference_info_nce
from hardbatch.train.collate import TokenizedPairs
from hardbatch.train.step import StepRunner

CTX = SimpleNamespace(group=None, device=torch.device("cpu"))


def _config(**overrides):
    return SimpleNamespace(**{"scale": 20.0, "symmetric": False, "gradcache_chunk": None, **overrides})


def _embeddings():
    gen = torch.Generator().manual_seed(0)
    query = F.normalize(torch.randn(4, 8, generator=gen), dim=-1)
    document = F.normalize(torch.randn(6, 8, generator=gen), dim=-1)
    document[:4] = F.normalize(query + 0.3 * torch.randn(4, 8, generator=gen), dim=-1)  # positives near
    return query, document


@pytest.mark.parametrize(("scale", "symmetric"), [(5.0, False), (5.0, True), (50.0, True)])
def test_loss_uses_the_configured_scale_and_direction(scale, symmetric):
    query, document = _embeddings()
    runner = StepRunner(None, _config(scale=scale, symmetric=symmetric), CTX, None)
    want = reference_info_nce(query, document, torch.arange(4), scale=scale, symmetric=symmetric)
    torch.testing.assert_close(runner.loss(query, document), want)


def test_loss_masks_duplicate_documents_only_when_ids_are_given():
    query, document = _embeddings()
    query_ids = torch.tensor([10, 11, 12, 13])
    key_ids = torch.tensor([10, 11, 12, 13, 10, 99])  # document 4 repeats query 0's positive text...
    document[4] = document[0]  # ... so it has the same embedding
    runner = StepRunner(None, _config(), CTX, None)
    masked = runner.loss(query, document, query_ids, key_ids)
    labels = torch.arange(4)
    want = reference_info_nce(
        query, document, labels, scale=20.0, symmetric=False, query_ids=query_ids, key_ids=key_ids
    )
    torch.testing.assert_close(masked, want)
    plain = reference_info_nce(query, document, labels, scale=20.0, symmetric=False)
    torch.testing.assert_close(runner.loss(query, document, None, None), plain)
    assert not torch.allclose(masked, plain)


class _Recorder(torch.nn.Module):
    """A stand-in encoder that records the autocast state its forward runs under."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.eye(3))
        self.seen: list[tuple[bool, torch.dtype]] = []

    def forward(self, *features):
        self.seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return tuple(f["x"] @ self.weight for f in features)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_forward_runs_under_the_requested_autocast(dtype):
    encoder = _Recorder()
    gen = torch.Generator().manual_seed(0)
    batch = TokenizedPairs(
        {"x": torch.randn(2, 3, generator=gen)},
        {"x": torch.randn(2, 3, generator=gen)},
        num_queries=2,
        num_extra=0,
    )
    loss = StepRunner(encoder, _config(), CTX, dtype).step(batch)
    assert encoder.seen == [(dtype is not None, torch.bfloat16)]  # CPU autocast's dtype is bf16
    assert loss == loss and encoder.weight.grad is not None  # finite loss, gradient accumulated
