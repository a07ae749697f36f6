"""info_nce (tiled, torch backend) against the materialising reference: values and every gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hardbatch.errors import ConfigError
from hardbatch.losses import (
    InfoNCELoss,
    grouped_keys,
    info_nce,
    reference_info_nce,
    stacked_keys,
    text_ids,
)


def _embeddings(rows: int, dim: int, generator: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    return F.normalize(torch.randn(rows, dim, generator=generator), dim=-1).to(dtype)


def _case(b: int, d: int, negatives: int, layout: str, dtype, seed: int):
    """Queries, keys, labels for b queries with `negatives` hard negatives each, in the given layout."""
    gen = torch.Generator().manual_seed(seed)
    query = _embeddings(b, d, gen, dtype)
    # Positives correlated with queries so that losses are not all ≈ log(n).
    positive = F.normalize(query.float() + 0.5 * torch.randn(b, d, generator=gen), dim=-1).to(dtype)
    columns = [_embeddings(b, d, gen, dtype) for _ in range(negatives)]
    keys, labels = (stacked_keys if layout == "stacked" else grouped_keys)(positive, columns)
    return query, keys, labels


def _masks(labels: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Few distinct ids so that many (query, key) pairs collide and get masked."""
    gen = torch.Generator().manual_seed(seed + 1)
    key_ids = torch.randint(0, 7, (n,), generator=gen)
    return key_ids[labels].clone(), key_ids


def _loss_and_grads(fn, query, key, labels, scale, upstream=None, **kwargs):
    query = query.detach().clone().requires_grad_()
    key = key.detach().clone().requires_grad_()
    scale_t = torch.tensor(float(scale), requires_grad=True)
    loss = fn(query, key, labels, scale=scale_t, **kwargs)
    grad_out = torch.ones_like(loss) if upstream is None else upstream.to(loss.dtype)
    dq, dk, ds = torch.autograd.grad(loss, [query, key, scale_t], grad_out)
    return loss.detach(), dq, dk, ds


CASES = [
    # b, d, negatives, layout, masks, reduction, scale, symmetric, tile
    pytest.param(1, 1, 0, "stacked", False, "mean", 1.0, True, None, id="b1-d1"),
    pytest.param(1, 7, 2, "grouped", True, "sum", 100.0, True, 2, id="b1-mask-fully-masked-cols"),
    pytest.param(3, 7, 1, "stacked", True, "none", 100.0, True, (2, 3), id="b3-d7-stacked-mask"),
    pytest.param(3, 7, 2, "grouped", False, "mean", 1.0, False, (2, 2), id="b3-grouped-asym"),
    pytest.param(257, 384, 1, "grouped", True, "none", 20.0, True, (64, 100), id="b257-d384-grouped"),
    pytest.param(257, 1023, 2, "stacked", False, "sum", 100.0, False, (100, 129), id="b257-d1023-asym"),
    pytest.param(1000, 384, 0, "stacked", True, "mean", 100.0, True, (256, 384), id="b1000-d384-mask"),
    pytest.param(1000, 1023, 1, "stacked", False, "mean", 20.0, True, None, id="b1000-d1023-default-tile"),
]


@pytest.mark.parametrize(
    ("b", "d", "negatives", "layout", "masked", "reduction", "scale", "symmetric", "tile"), CASES
)
def test_fp32_matches_reference(b, d, negatives, layout, masked, reduction, scale, symmetric, tile):
    query, key, labels = _case(b, d, negatives, layout, torch.float32, seed=b * 31 + d)
    ids = _masks(labels, key.shape[0], seed=b) if masked else (None, None)
    upstream = torch.randn(b, generator=torch.Generator().manual_seed(3)) if reduction == "none" else None
    kwargs = dict(
        symmetric=symmetric, query_ids=ids[0], key_ids=ids[1], reduction=reduction, upstream=upstream
    )
    ours = _loss_and_grads(info_nce, query, key, labels, scale, tile_size=tile, **kwargs)
    ref = _loss_and_grads(reference_info_nce, query, key, labels, scale, **kwargs)
    for name, got, want in zip(("loss", "dq", "dk", "dscale"), ours, ref):
        assert got.dtype == want.dtype, name
        assert torch.isfinite(got).all(), name
        tol = 2e-6 * scale * (b if reduction == "sum" and name in ("loss", "dscale") else 1) + 1e-6
        torch.testing.assert_close(got, want, rtol=1e-4, atol=tol, msg=name)


@pytest.mark.parametrize(
    ("dtype", "b", "d", "negatives", "masked", "scale"),
    [
        pytest.param(torch.bfloat16, 257, 384, 2, True, 20.0, id="bf16-b257"),
        pytest.param(torch.bfloat16, 1000, 64, 1, False, 100.0, id="bf16-b1000-scale100"),
        pytest.param(torch.float16, 33, 7, 1, True, 20.0, id="fp16-b33"),
    ],
)
def test_low_precision_matches_reference(dtype, b, d, negatives, masked, scale):
    query, key, labels = _case(b, d, negatives, "stacked", dtype, seed=7)
    ids = _masks(labels, key.shape[0], seed=5) if masked else (None, None)
    ours = _loss_and_grads(
        info_nce, query, key, labels, scale, query_ids=ids[0], key_ids=ids[1], tile_size=(200, 300)
    )
    ref = _loss_and_grads(reference_info_nce, query, key, labels, scale, query_ids=ids[0], key_ids=ids[1])
    for name, got, want in zip(("loss", "dq", "dk", "dscale"), ours, ref):
        if name in ("loss", "dq", "dk"):
            assert got.dtype == dtype, f"{name} must come back in the input dtype"
        scale_err = want.float().abs().max().item() * 2e-2 + 1e-3
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=scale_err, msg=name)


def test_shared_positive_keys_and_float_scale():
    """Several queries pointing at one positive key (labels not a permutation), float scale, asymmetric tiles."""
    gen = torch.Generator().manual_seed(11)
    query, key = _embeddings(40, 16, gen), _embeddings(25, 16, gen)
    labels = torch.randint(0, 25, (40,), generator=gen)
    for symmetric in (True, False):
        got_q = query.clone().requires_grad_()
        got_k = key.clone().requires_grad_()
        loss = info_nce(got_q, got_k, labels, scale=30.0, symmetric=symmetric, tile_size=(7, 6))
        loss.backward()
        ref_q = query.clone().requires_grad_()
        ref_k = key.clone().requires_grad_()
        ref = reference_info_nce(ref_q, ref_k, labels, scale=30.0, symmetric=symmetric)
        ref.backward()
        torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_q.grad, ref_q.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got_k.grad, ref_k.grad, rtol=1e-4, atol=1e-6)


def test_layouts_give_the_same_loss():
    gen = torch.Generator().manual_seed(2)
    query, positive = _embeddings(9, 12, gen), _embeddings(9, 12, gen)
    negatives = torch.stack([_embeddings(9, 12, gen) for _ in range(3)], dim=1)
    stacked, stacked_lab = stacked_keys(positive, negatives)
    grouped, grouped_lab = grouped_keys(positive, negatives)
    assert torch.equal(grouped[grouped_lab], positive) and torch.equal(stacked[stacked_lab], positive)
    a = info_nce(query, stacked, stacked_lab, reduction="none")
    b = info_nce(query, grouped, grouped_lab, reduction="none")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_duplicate_texts_are_masked():
    """A key equal to query 0's positive (a duplicate text) must not count as a negative for query 0."""
    gen = torch.Generator().manual_seed(4)
    query, positive = _embeddings(4, 8, gen), _embeddings(4, 8, gen)
    texts = ["a", "b", "c", "d", "a"]  # key 4 duplicates query 0's positive text
    key = torch.cat([positive, positive[:1]])
    ids = text_ids(texts)
    masked = info_nce(
        query, key, torch.arange(4), scale=20.0, query_ids=ids[:4], key_ids=ids, reduction="none"
    )
    unmasked_without_dup = info_nce(
        query, key[:4], torch.arange(4), scale=20.0, reduction="none", symmetric=False
    )
    masked_rows = info_nce(
        query,
        key,
        torch.arange(4),
        scale=20.0,
        query_ids=ids[:4],
        key_ids=ids,
        reduction="none",
        symmetric=False,
    )
    torch.testing.assert_close(masked_rows[0], unmasked_without_dup[0])
    assert torch.isfinite(masked).all()


def test_scale_gradient_is_exact_under_learnable_module():
    module = InfoNCELoss(scale=10.0, learnable_scale=True, tile_size=5)
    gen = torch.Generator().manual_seed(9)
    query, key = _embeddings(12, 6, gen), _embeddings(20, 6, gen)
    module(query, key).backward()
    logit_scale = module.logit_scale.detach().clone().requires_grad_()
    reference_info_nce(query, key, scale=logit_scale.exp()).backward()
    torch.testing.assert_close(module.logit_scale.grad, logit_scale.grad, rtol=1e-5, atol=1e-7)


def test_torch_backend_is_used_on_cpu_even_when_forced_by_env(monkeypatch):
    from hardbatch.losses import resolve_backend

    monkeypatch.setenv("HARDBATCH_LOSS_BACKEND", "torch")
    assert resolve_backend(None, torch.device("cpu"))[0] == "torch"
    monkeypatch.setenv("HARDBATCH_LOSS_BACKEND", "auto")
    assert resolve_backend(None, torch.device("cpu"))[0] == "torch"
    with pytest.raises(ConfigError, match="backend"):
        resolve_backend("cuda-magic", torch.device("cpu"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(query=torch.randn(3), key=torch.randn(3, 2)), "query: expected a 2-D"),
        (dict(query=torch.randn(3, 2), key=torch.randn(3, 4)), "dim"),
        (dict(query=torch.randn(3, 2), key=torch.randn(2, 2)), "at least b=3 keys"),
        (
            dict(query=torch.randn(2, 2), key=torch.randn(3, 2), labels=torch.tensor([0, 3])),
            r"labels\[1\] = 3",
        ),
        (dict(query=torch.randn(2, 2), key=torch.randn(3, 2), labels=torch.tensor([0.0, 1.0])), "integer"),
        (dict(query=torch.randn(2, 2), key=torch.randn(3, 2), query_ids=torch.tensor([0, 1])), "together"),
        (dict(query=torch.randn(2, 2), key=torch.randn(3, 2), reduction="avg"), "reduction"),
        (dict(query=torch.randn(2, 2), key=torch.randn(3, 2), tile_size=0), "tile_size"),
        (dict(query=torch.randn(2, 2), key=torch.randn(3, 2), scale=float("nan")), "finite"),
        (dict(query=torch.randint(0, 3, (2, 2)), key=torch.randn(3, 2)), "floating-point"),
    ],
)
def test_bad_input_gives_clear_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        info_nce(**kwargs)


def test_group_without_process_group_is_a_clear_error():
    with pytest.raises(ConfigError, match="init_process_group"):
        info_nce(torch.randn(2, 3), torch.randn(2, 3), group=True)
