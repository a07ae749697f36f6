"""bf16 inputs: bf16 tile matmuls where that is fast, fp32 upcast elsewhere; both within the issue-14 targets.

Targets (against float64 on the same, bf16-rounded, inputs' source values): loss within 1e-2 relative,
gradient cosine ≥ 0.999 and gradient norm within 1e-2 (the norm catches a dropped or doubled scale factor,
which the cosine alone cannot see). ``$HARDBATCH_BF16_MATMUL`` forces each path, so both run on any CPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hardbatch import device as hb_device
from hardbatch.losses import info_nce, reference_info_nce, stacked_keys
from hardbatch.losses.tiled import tile_dtype


def _case(b: int, d: int, negatives: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    query = F.normalize(torch.randn(b, d, generator=gen), dim=-1)
    positive = F.normalize(query + 0.4 * torch.randn(b, d, generator=gen), dim=-1)
    # Hard negatives close to their queries: large logits that the bf16 rounding must not spoil.
    hard = [F.normalize(query + 0.6 * torch.randn(b, d, generator=gen), dim=-1) for _ in range(negatives)]
    keys, labels = stacked_keys(positive, hard)
    key_ids = torch.randint(0, 9, (keys.shape[0],), generator=gen)
    return query, keys, labels, key_ids[labels].clone(), key_ids


def _run(query, keys, labels, q_ids, k_ids, scale, symmetric, dtype, fn=info_nce, **kw):
    q = query.to(dtype).requires_grad_()
    k = keys.to(dtype).requires_grad_()
    s = torch.tensor(
        scale, dtype=torch.float64 if dtype == torch.float64 else torch.float32, requires_grad=True
    )
    loss = fn(q, k, labels, scale=s, symmetric=symmetric, query_ids=q_ids, key_ids=k_ids, **kw)
    loss.backward()
    return loss.detach().double(), q.grad.double(), k.grad.double(), s.grad.double()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


@pytest.mark.parametrize("bf16_matmul", ["1", "0"], ids=["bf16-tiles", "fp32-tiles"])
@pytest.mark.parametrize(
    ("b", "d", "negatives", "scale", "symmetric", "tile"),
    [
        (257, 96, 1, 20.0, True, (64, 100)),
        (130, 33, 2, 100.0, False, (17, 50)),
        (301, 384, 0, 50.0, True, (128, 128)),
    ],
)
def test_bf16_inputs_meet_the_accuracy_targets(
    monkeypatch, bf16_matmul, b, d, negatives, scale, symmetric, tile
):
    monkeypatch.setenv(hb_device.BF16_MATMUL_ENV, bf16_matmul)
    query, keys, labels, q_ids, k_ids = _case(b, d, negatives, seed=b)
    expected = torch.bfloat16 if bf16_matmul == "1" else torch.float32
    assert tile_dtype(query.bfloat16(), keys.bfloat16()) == expected
    want = _run(query, keys, labels, q_ids, k_ids, scale, symmetric, torch.float64, fn=reference_info_nce)
    got = _run(query, keys, labels, q_ids, k_ids, scale, symmetric, torch.bfloat16, tile_size=tile)
    assert abs(float(got[0] - want[0])) <= 1e-2 * abs(float(want[0]))
    for name, g, w in zip(("dq", "dk"), got[1:3], want[1:3]):
        assert _cos(g, w) >= 0.999, name
        assert abs(float(g.norm() / w.norm()) - 1) <= 1e-2, name
    assert abs(float(got[3] - want[3])) <= 1e-2 * abs(float(want[3])) + 1e-4


def test_bf16_tiles_agree_with_fp32_tiles(monkeypatch):
    """Same bf16 inputs through both paths: the differences are bf16 rounding of products, not a bug."""
    query, keys, labels, q_ids, k_ids = _case(200, 64, 1, seed=7)
    results = {}
    for flag in ("0", "1"):
        monkeypatch.setenv(hb_device.BF16_MATMUL_ENV, flag)
        results[flag] = _run(
            query, keys, labels, q_ids, k_ids, 30.0, True, torch.bfloat16, tile_size=(64, 96)
        )
    torch.testing.assert_close(results["1"][0], results["0"][0], rtol=1e-2, atol=0)
    for a, b in zip(results["1"][1:3], results["0"][1:3]):
        assert _cos(a, b) >= 0.9995


def test_fp32_inputs_never_use_bf16_tiles(monkeypatch):
    monkeypatch.setenv(hb_device.BF16_MATMUL_ENV, "1")
    x = torch.randn(3, 4)
    assert tile_dtype(x, x) == torch.float32
    assert tile_dtype(x.bfloat16(), x) == torch.float32


def test_capability_rules(monkeypatch):
    """By CPU flags and vendor alone, never by a timing, so the path cannot change with the machine's load."""
    monkeypatch.delenv(hb_device.BF16_MATMUL_ENV, raising=False)
    monkeypatch.setattr(hb_device, "cpu_vendor", lambda: "GenuineIntel")
    monkeypatch.setattr(hb_device, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16", "avx512_bf16"}))
    assert hb_device.fast_bf16_matmul("cpu") is True
    monkeypatch.setattr(hb_device, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert hb_device.fast_bf16_matmul("cpu") is False
    monkeypatch.setattr(hb_device, "cpu_flags", lambda: frozenset({"avx512_bf16"}))  # measured at 0.74× fp32
    assert hb_device.fast_bf16_matmul("cpu") is False
    monkeypatch.setattr(hb_device, "cpu_vendor", lambda: "AuthenticAMD")  # Zen 4: measured 2.4× fp32
    assert hb_device.fast_bf16_matmul("cpu") is True
    monkeypatch.setattr(hb_device, "cpu_flags", lambda: frozenset({"avx512f", "avx2"}))  # Zen 3 and older
    assert hb_device.fast_bf16_matmul("cpu") is False
    monkeypatch.setattr(hb_device, "cpu_vendor", lambda: None)  # vendor unreadable
    monkeypatch.setattr(hb_device, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    assert hb_device.fast_bf16_matmul("cpu") is False
    monkeypatch.setattr(hb_device, "cpu_flags", lambda: None)  # flags unreadable
    assert hb_device.fast_bf16_matmul("cpu") is False
    monkeypatch.setenv(hb_device.BF16_MATMUL_ENV, "1")
    assert hb_device.fast_bf16_matmul("cpu") is True
    monkeypatch.setenv(hb_device.BF16_MATMUL_ENV, "0")
    assert hb_device.fast_bf16_matmul("cpu") is False
