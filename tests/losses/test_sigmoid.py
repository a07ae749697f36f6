"""sigmoid_loss (tiled) against a naive float64 reference: values and gradients of q, k, scale and bias."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hardbatch.errors import ConfigError
from hardbatch.losses import (
    HardbatchSigmoidLoss,
    SigmoidLoss,
    reference_sigmoid_loss,
    sigmoid_loss,
    stacked_keys,
)


def _naive(q, k, scale, bias, labels, query_ids, key_ids):
    """Per-query −Σ_j log σ(z_ij·x_ij), written out pair by pair (independent of both implementations)."""
    x = scale * (q @ k.T) + bias
    rows = []
    for i in range(q.shape[0]):
        total = x.new_zeros(())
        for j in range(k.shape[0]):
            positive = j == int(labels[i])
            if query_ids is not None and not positive and int(query_ids[i]) == int(key_ids[j]):
                continue
            total = total - F.logsigmoid(x[i, j] if positive else -x[i, j])
        rows.append(total)
    return torch.stack(rows)


def _case(b, n, d, seed, masks, shared):
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, d, generator=gen, dtype=torch.float64), dim=-1)
    positives = F.normalize(q + 0.4 * torch.randn(b, d, generator=gen, dtype=torch.float64), dim=-1)
    extra = F.normalize(torch.randn(n - b, d, generator=gen, dtype=torch.float64), dim=-1)
    k = torch.cat([positives, extra])
    labels = torch.arange(b)
    if shared and b > 2:
        labels[2] = labels[0]
    key_ids = query_ids = None
    if masks:
        key_ids = torch.randint(0, 3, (n,), generator=gen)
        query_ids = key_ids[labels].clone()
    upstream = torch.rand(b, generator=gen, dtype=torch.float64) + 0.5
    return q, k, labels, query_ids, key_ids, upstream


def _value_and_grads(fn, q, k, scale, bias, dtype, reduction, upstream, **kwargs):
    q = q.detach().to(dtype).requires_grad_()
    k = k.detach().to(dtype).requires_grad_()
    s = torch.tensor(
        scale, dtype=torch.float64 if dtype == torch.float64 else torch.float32, requires_grad=True
    )
    t = torch.tensor(bias, dtype=s.dtype, requires_grad=True)
    loss = fn(q, k, s, t, reduction=reduction, **kwargs)
    grad_out = upstream.to(loss.dtype) if reduction == "none" else torch.ones_like(loss)
    return (loss.detach(), *torch.autograd.grad(loss, [q, k, s, t], grad_out))


CASES = [
    # b, n, d, masks, shared positive, reduction, scale, bias, tile
    pytest.param(1, 1, 1, False, False, "mean", 1.0, 0.0, None, id="b1-n1-d1"),
    pytest.param(3, 7, 5, True, True, "none", 10.0, -10.0, (2, 3), id="b3-n7-mask-shared"),
    pytest.param(5, 5, 3, False, False, "sum", 4.0, 1.5, (4, 2), id="b5-square-sum"),
    pytest.param(9, 13, 6, True, False, "mean", 25.0, -3.0, (4, 5), id="b9-n13-mask"),
]


@pytest.mark.parametrize(("b", "n", "d", "masks", "shared", "reduction", "scale", "bias", "tile"), CASES)
def test_matches_naive_pairwise_loss_fp64(b, n, d, masks, shared, reduction, scale, bias, tile):
    q, k, labels, qi, ki, up = _case(b, n, d, seed=b * n, masks=masks, shared=shared)
    kwargs = dict(labels=labels, query_ids=qi, key_ids=ki)

    def naive(q, k, s, t, reduction, **kw):
        per_row = _naive(q, k, s, t, kw["labels"], kw["query_ids"], kw["key_ids"])
        return {"mean": per_row.mean(), "sum": per_row.sum(), "none": per_row}[reduction]

    want = _value_and_grads(naive, q, k, scale, bias, torch.float64, reduction, up, **kwargs)
    got = _value_and_grads(
        sigmoid_loss, q, k, scale, bias, torch.float64, reduction, up, tile_size=tile, **kwargs
    )
    for name, g, w in zip(("loss", "dq", "dk", "dscale", "dbias"), got, want):
        # Tiles are computed in fp32 whatever the input dtype: fp32-level agreement with the fp64 truth.
        torch.testing.assert_close(g, w, rtol=2e-5, atol=2e-5, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize(
    ("b", "n", "d", "tile"), [(257, 600, 384, (64, 100)), (1000, 1000, 64, (256, 384)), (33, 70, 17, (8, 9))]
)
@pytest.mark.parametrize(
    ("dtype", "bf16_matmul"),
    [(torch.float32, "0"), (torch.bfloat16, "0"), (torch.bfloat16, "1")],
    ids=["fp32", "bf16-upcast", "bf16-tiles"],
)
def test_matches_reference_at_awkward_shapes(monkeypatch, b, n, d, tile, dtype, bf16_matmul):
    from hardbatch.device import BF16_MATMUL_ENV

    monkeypatch.setenv(BF16_MATMUL_ENV, bf16_matmul)  # both bf16 paths on any CPU
    q, k, labels, qi, ki, up = _case(b, n, d, seed=b + n, masks=True, shared=True)
    kwargs = dict(labels=labels, query_ids=qi, key_ids=ki)
    # The float64 reference sees exactly the (rounded) inputs the loss sees.
    q_in, k_in = q.to(dtype).to(torch.float64), k.to(dtype).to(torch.float64)
    want = _value_and_grads(
        reference_sigmoid_loss, q_in, k_in, 10.0, -10.0, torch.float64, "none", up, **kwargs
    )
    got = _value_and_grads(sigmoid_loss, q, k, 10.0, -10.0, dtype, "none", up, tile_size=tile, **kwargs)
    if dtype == torch.float32:
        for g, w in zip(got, want):
            torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-4)
        return
    # bf16: outputs are rounded to bf16 (8 bits of mantissa); accumulation itself is fp32. With bf16 tiles the
    # products are rounded too (the positives' are not): the issue's targets, loss within 1e-2 relative,
    # gradient cosine >= 0.999 and norm within 1e-2 (which catches a lost or doubled scale factor).
    torch.testing.assert_close(got[0].double(), want[0], rtol=1e-2, atol=1e-2)
    for g, w in zip(got[1:3], want[1:3]):
        cosine = F.cosine_similarity(g.double().flatten(), w.flatten(), dim=0)
        assert cosine > 0.999, float(cosine)
        assert abs(float(g.double().norm() / w.norm()) - 1) <= 1e-2
    for g, w in zip(got[3:], want[3:]):
        torch.testing.assert_close(g.double(), w, rtol=1e-2 if bf16_matmul == "1" else 1e-3, atol=1e-3)


def test_masked_pairs_are_left_out_not_negatives():
    # One query, keys [positive, duplicate of the positive's document]: masking drops the second pair.
    q, k = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ids = torch.tensor([7, 7])
    masked = sigmoid_loss(q, k, 2.0, -1.0, query_ids=ids[:1], key_ids=ids)
    unmasked = sigmoid_loss(q, k, 2.0, -1.0)
    assert math.isclose(float(masked), math.log1p(math.exp(-1.0)), rel_tol=1e-6)  # −log σ(2 − 1)
    assert math.isclose(float(unmasked), float(masked) + math.log1p(math.exp(-1.0)), rel_tol=1e-6)


def test_bad_arguments_raise_config_error():
    q, k = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ConfigError, match="bias"):
        sigmoid_loss(q, k, 1.0, torch.zeros(2))
    with pytest.raises(ConfigError, match="distributed"):
        sigmoid_loss(q, k, 1.0, 0.0, distributed="allgather")
    with pytest.raises(ConfigError, match="labels"):
        sigmoid_loss(q, k, 1.0, 0.0, labels=torch.tensor([0, 1, 5]))


def test_module_initialises_like_siglip_and_learns_scale_and_bias():
    module = SigmoidLoss(tile_size=3)
    assert math.isclose(module.logit_scale.item(), math.log(10.0), rel_tol=1e-6)
    assert module.logit_bias.item() == -10.0
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(5, 4, generator=gen), torch.randn(8, 4, generator=gen)
    module(q, k).backward()
    s = torch.tensor(math.log(10.0), requires_grad=True)
    t = torch.tensor(-10.0, requires_grad=True)
    reference_sigmoid_loss(q, k, s.exp(), t).backward()
    torch.testing.assert_close(module.logit_scale.grad, s.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(module.logit_bias.grad, t.grad, rtol=1e-5, atol=1e-7)
    fixed = SigmoidLoss(5.0, 1.0, learnable=False)
    assert not list(fixed.parameters())
    torch.testing.assert_close(fixed(q, k), reference_sigmoid_loss(q, k, 5.0, 1.0))


def test_sentence_transformers_loss_equals_functional_with_hard_negatives(tiny_model):
    loss = HardbatchSigmoidLoss(tiny_model, tile_size=(2, 3))
    gen = torch.Generator().manual_seed(1)
    columns = [torch.randn(4, 10, generator=gen, requires_grad=True) for _ in range(3)]
    got = loss.compute_loss_from_embeddings(columns)
    anchors, pos, neg = (F.normalize(c, dim=-1) for c in columns)
    keys, labels = stacked_keys(pos, [neg])
    torch.testing.assert_close(got, reference_sigmoid_loss(anchors, keys, 10.0, -10.0, labels=labels))
    got.backward()
    assert loss.logit_scale.grad is not None and loss.logit_bias.grad is not None
    config = loss.get_config_dict()
    assert config["scale"] == 10.0 and config["bias"] == -10.0 and config["learnable"] is True


def test_sentence_transformers_loss_with_gradient_cache_matches_plain(tiny_model):
    features = [
        tiny_model.tokenize(["a cat", "a dog", "a car", "a cow"]),
        tiny_model.tokenize(["cat", "dog", "car", "a cat"]),
    ]
    grads = []
    was_training = tiny_model.training
    tiny_model.eval()  # no dropout: the plain and the cached pass see the same function
    for mini_batch in (None, 2):
        tiny_model.zero_grad()
        loss = HardbatchSigmoidLoss(tiny_model, mini_batch_size=mini_batch, mask_duplicates=True)
        value = loss(features, None)
        value.backward()
        grads.append(
            (
                value.detach(),
                loss.logit_bias.grad.clone(),
                [p.grad.clone() for p in tiny_model.parameters() if p.grad is not None],
            )
        )
    tiny_model.train(was_training)
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-6)
    assert grads[0][2]
    for a, b in zip(grads[0][2], grads[1][2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
