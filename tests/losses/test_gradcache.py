"""Gradient cache: parameter gradients equal a direct backward through the same (dropout-on) forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hardbatch.losses import InfoNCELoss, info_nce
from hardbatch.losses.gradcache import GradCache, RngState, cached_loss, split_batch

QUERIES = [f"how do I sort a list number {i}" for i in range(7)] + ["tiny", "a much longer query " * 4]
DOCS = [f"use sorted() on the list, variant {i}" for i in range(7)] + ["short doc", "another document " * 6]


def _features(model, texts):
    return model.tokenize(texts)


def _grads(model):
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def _direct_loss(model, columns, chunk_size, loss_fn):
    """Reference: the same chunked forward, with autograd, then one backward (no caching)."""
    embeddings = []
    for features in columns:
        chunks = split_batch(features, chunk_size)
        embeddings.append(torch.cat([model(chunk)["sentence_embedding"] for chunk in chunks]))
    return loss_fn(*embeddings)


@pytest.fixture
def dropout_model(tiny_model):
    """The session tiny model (dropout 0.1) in train mode, gradients cleared around the test."""
    was_training = tiny_model.training
    tiny_model.train()
    tiny_model.zero_grad(set_to_none=True)
    yield tiny_model
    tiny_model.zero_grad(set_to_none=True)
    tiny_model.train(was_training)


def test_cached_gradients_equal_direct_backward_with_dropout(dropout_model):
    model = dropout_model
    columns = [_features(model, QUERIES), _features(model, DOCS)]
    scale_module = InfoNCELoss(scale=20.0, learnable_scale=True)

    def loss_fn(q, d):
        return scale_module(F.normalize(q, dim=-1), F.normalize(d, dim=-1))

    torch.manual_seed(1234)
    direct = _direct_loss(model, columns, 4, loss_fn)
    (0.5 * direct).backward()  # a non-unit grad_output must reach every chunk (e.g. accumulation steps)
    want, want_scale = _grads(model), scale_module.logit_scale.grad.clone()
    model.zero_grad(set_to_none=True)
    scale_module.zero_grad(set_to_none=True)

    torch.manual_seed(1234)
    cached = cached_loss(model, columns, loss_fn, chunk_size=4)
    (0.5 * cached).backward()
    got = _grads(model)

    torch.testing.assert_close(cached.detach(), direct.detach(), rtol=1e-6, atol=1e-6)
    assert got.keys() == want.keys() and len(got) > 10
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-7, msg=name)
    torch.testing.assert_close(scale_module.logit_scale.grad, want_scale)

    # Dropout is really on: another RNG draw gives other gradients, so the replay above mattered.
    model.zero_grad(set_to_none=True)
    torch.manual_seed(99)
    cached_loss(model, columns, loss_fn, chunk_size=4).backward()
    other = _grads(model)
    assert any(not torch.allclose(other[name], want[name], atol=1e-6) for name in want)


def test_gradcache_step_matches_full_batch_without_dropout():
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.GELU(), torch.nn.Linear(8, 4))
    queries, keys = torch.randn(11, 5), torch.randn(23, 5)

    def loss_fn(q, k):
        return info_nce(q, k, scale=3.0, tile_size=4)

    loss_fn(encoder(queries), encoder(keys)).backward()
    want = {n: p.grad.clone() for n, p in encoder.named_parameters()}
    encoder.zero_grad(set_to_none=True)
    loss = GradCache(encoder, chunk_size=3).step([queries, keys], loss_fn)
    assert loss.requires_grad is False
    for name, param in encoder.named_parameters():
        torch.testing.assert_close(param.grad, want[name], rtol=1e-5, atol=1e-7)


def test_no_grad_returns_plain_loss():
    encoder = torch.nn.Linear(3, 2)
    with torch.no_grad():
        loss = cached_loss(encoder, [torch.randn(4, 3), torch.randn(4, 3)], info_nce, chunk_size=2)
    assert not loss.requires_grad


def test_rng_state_replay_is_isolated():
    torch.manual_seed(5)
    state = RngState.capture(torch.zeros(1))
    first, second = torch.rand(3), torch.rand(3)
    torch.manual_seed(5)
    torch.rand(3)
    with state.replay():
        assert torch.equal(torch.rand(3), first)  # replayed from the snapshot
    assert torch.equal(torch.rand(3), second)  # and the outer stream continues where it was


def test_split_batch_trims_padding_per_chunk():
    features = {
        "input_ids": torch.tensor([[1, 2, 0, 0], [3, 0, 0, 0], [4, 5, 6, 7]]),
        "attention_mask": torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]),
    }
    chunks = split_batch(features, 2)
    assert chunks[0]["input_ids"].shape == (2, 2) and chunks[1]["input_ids"].shape == (1, 4)


class _WritesIntoInput(torch.nn.Module):
    """Like a SentenceTransformer: stores a large activation in the feature dict it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.activations: list = []  # weak references to every stored activation

    def forward(self, features: dict) -> dict:
        import weakref

        hidden = torch.tanh(features["x"][:, None, :].expand(-1, 64, -1) * 1.5)  # (rows, 64, 4): "tokens"
        features["token_embeddings"] = hidden
        self.activations.append(weakref.ref(hidden))
        features["sentence_embedding"] = self.linear(hidden.mean(1))
        return features


def test_cached_chunks_do_not_keep_what_the_encoder_wrote_into_them():
    """The memory fix of issue 14 item 6: an encoder's outputs must not live on in the cached chunks.

    Keeping them (the old behaviour) holds every chunk's token embeddings until the step ends, which grows
    peak memory by O(B·L·h) instead of one chunk's activations.
    """
    encoder = _WritesIntoInput()
    batch = {"x": torch.randn(12, 4)}
    alive_at_loss = []

    def loss_fn(q, d):
        alive_at_loss.append(sum(ref() is not None for ref in encoder.activations))
        return info_nce(F.normalize(q, dim=-1), F.normalize(d, dim=-1))

    alive_in_replay = []
    handle = encoder.linear.register_full_backward_hook(
        lambda *_: alive_in_replay.append(sum(ref() is not None for ref in encoder.activations))
    )
    loss = cached_loss(encoder, [batch, {"x": torch.randn(12, 4)}], loss_fn, chunk_size=4)
    assert alive_at_loss == [0]  # six no-grad chunks ran; none of their activations survives
    loss.backward()
    handle.remove()
    # During each chunk's replay backward only that chunk's activation (if any) is alive.
    assert len(alive_in_replay) == 6 and max(alive_in_replay) <= 1
    assert set(batch) == {"x"}  # the caller's dict is untouched
    assert encoder.linear.weight.grad is not None
