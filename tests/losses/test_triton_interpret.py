"""Triton InfoNCE kernels: interpreter runs vs a float64 reference, plus host-side checks.

The kernels need ``TRITON_INTERPRET=1`` set before they are JIT-decorated, so all kernel executions happen
in ONE subprocess (``triton_interpret_runner.py``, ~10–35 s on a loaded 2-core box); the per-case tests
below only read its JSON. Everything else (validation, config filtering, launch layout, the reference
itself, the missing-extra error) runs in-process without launching a kernel.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("triton")

from triton_interpret_runner import CASES, TOLERANCES, make_inputs, reference_contract

from hardbatch.errors import ConfigError, HardbatchError, MissingExtraError

RUNNER = Path(__file__).with_name("triton_interpret_runner.py")


@pytest.fixture(scope="module")
def interpreter_results() -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1", HARDBATCH_PROGRESS="0", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(RUNNER)], capture_output=True, text=True, env=env, timeout=240, check=False
    )
    assert proc.returncode == 0, f"interpreter runner failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(CASES))
def test_kernels_match_float64_reference(interpreter_results: dict, name: str) -> None:
    case = CASES[name]
    errors = interpreter_results[name]
    assert errors["shapes_ok"] == 1.0, "dq/dk/dscale must be fp32 with the input shapes"
    for quantity, tol in TOLERANCES[case.dtype].items():
        assert errors[quantity] <= tol, f"{name}: {quantity} error {errors[quantity]:.3g} > {tol:g}"
    if case.compute_col:
        assert errors["col_masked_ok"] == 1.0, "fully masked columns must have col_lse == -inf exactly"
    if case.fully_masked_cols:
        assert errors["col_masked_count"] >= case.fully_masked_cols, "the case must contain masked columns"


@pytest.mark.timeout(300)
def test_kernels_agree_with_torch_tiled_backend(interpreter_results: dict) -> None:
    """Both backends implement one contract; on the cross-checked cases they agree to fp32 precision."""
    checked = [name for name, errors in interpreter_results.items() if "tiled_row" in errors]
    if not checked:
        pytest.skip("hardbatch.losses.tiled is not importable")
    for name in checked:
        for key, value in interpreter_results[name].items():
            if key.startswith("tiled_"):
                assert value <= 5e-5, f"{name}: triton vs tiled {key} differs by {value:.3g}"


def test_reference_is_the_gradient_of_the_contract_objective() -> None:
    """reference_contract's dS formula equals autograd of Σ g_row·(row − pos) + Σ g_col·col − Σ g_col[l]·pos."""
    x = make_inputs(CASES["bf16_ids"])
    q = x["q"].double().requires_grad_()
    k = x["k"].double().requires_grad_()
    scale = x["scale"].double().requires_grad_()
    labels, g_row, g_col = x["labels"], x["g_row"].double(), x["g_col"].double()
    b = q.shape[0]
    logits = scale * q @ k.T
    same = x["q_ids"][:, None] == x["k_ids"][None, :]
    same[torch.arange(b), labels] = False
    logits = logits.masked_fill(same, -math.inf)
    pos = logits[torch.arange(b), labels]
    objective = (g_row * (logits.logsumexp(1) - pos)).sum() + (g_col * logits.logsumexp(0)).sum()
    objective = objective - (g_col[labels] * pos).sum()
    objective.backward()
    ref = reference_contract(
        x["q"], x["k"], x["scale"], labels, x["q_ids"], x["k_ids"], x["g_row"], x["g_col"]
    )
    torch.testing.assert_close(ref["dq"], q.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ref["dk"], k.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ref["dscale"], scale.grad, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------ in-process host checks


@pytest.fixture(scope="module")
def kernels():
    return importlib.import_module("hardbatch.losses.triton_kernels")


def _inputs(b: int = 4, n: int = 5, d: int = 3):
    return torch.randn(b, d), torch.randn(n, d), torch.tensor(1.0), torch.arange(b) % n


def test_cpu_tensors_without_interpreter_are_refused(kernels) -> None:
    if kernels.interpreter_enabled():
        pytest.skip("TRITON_INTERPRET is set in this process")
    q, k, scale, labels = _inputs()
    assert not kernels.triton_supported(q)
    with pytest.raises(ConfigError, match="CUDA"):
        kernels.fused_lse_forward(q, k, scale, labels, None, None, True, None, None)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a: {**a, "k": torch.randn(5, 4)}, "feature dimension"),
        (lambda a: {**a, "q": a["q"].double(), "k": a["k"].double()}, "float32/bfloat16/float16"),
        (lambda a: {**a, "k": a["k"].half()}, "same dtype"),
        (lambda a: {**a, "labels": torch.tensor([0, 1, 5, 2])}, r"labels\[2\] = 5"),
        (lambda a: {**a, "labels": torch.tensor([0, -2, 1, 2])}, r"labels\[1\] = -2"),
        (lambda a: {**a, "labels": torch.arange(3)}, "shape"),
        (lambda a: {**a, "q_ids": torch.zeros(4, dtype=torch.long)}, "together"),
        (
            lambda a: {
                **a,
                "q_ids": torch.zeros(3, dtype=torch.long),
                "k_ids": torch.zeros(5, dtype=torch.long),
            },
            "q_ids",
        ),
        (lambda a: {**a, "scale": torch.ones(2)}, "scalar"),
        (lambda a: {**a, "q": torch.randn(4, 3, 1)}, "2-D"),
    ],
)
def test_bad_inputs_raise_clear_errors(kernels, mutate, message: str) -> None:
    q, k, scale, labels = _inputs()
    args = mutate({"q": q, "k": k, "scale": scale, "labels": labels, "q_ids": None, "k_ids": None})
    with pytest.raises(HardbatchError, match=message):
        kernels.fused_lse_forward(
            args["q"],
            args["k"],
            args["scale"],
            args["labels"],
            args["q_ids"],
            args["k_ids"],
            True,
            None,
            None,
        )


def test_backward_requires_col_lse_and_g_col_together(kernels) -> None:
    q, k, scale, labels = _inputs()
    with pytest.raises(ConfigError, match="together"):
        kernels.fused_backward(
            q, k, scale, labels, None, None, torch.zeros(4), torch.zeros(5), torch.zeros(4), None, None, None
        )


def test_missing_triton_raises_missing_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    monkeypatch.delitem(sys.modules, "hardbatch.losses.triton_kernels", raising=False)
    with pytest.raises(MissingExtraError, match=r"hardbatch\[triton\]"):
        importlib.import_module("hardbatch.losses.triton_kernels")


def test_config_filter_respects_tile_caps_and_feature_dim(kernels) -> None:
    configs = kernels._hopper_backward_configs()
    kept = kernels._filter_configs(configs, 7, 64, 1 << 30)
    assert kept and all(c.kwargs["BLOCK_M"] <= 64 and c.kwargs["BLOCK_D"] == 16 for c in kept)
    # The CPU backend's 1024/4096 tiles leave the autotuner free; tiny caps fall back to legal blocks.
    assert len(
        kernels._filter_configs(configs, 768, kernels._block_cap(4096), kernels._block_cap(1024))
    ) == len(configs)
    (tiny,) = kernels._filter_configs(configs, 768, kernels._block_cap(8), kernels._block_cap(16))
    assert tiny.kwargs["BLOCK_M"] == tiny.kwargs["BLOCK_N"] == 16
    assert kernels._block_cap(None) == kernels._block_cap(0) > 256


@given(
    b=st.integers(1, 300_000),
    n=st.integers(1, 300_000),
    sms=st.sampled_from([2, 108, 132]),
    groups=st.one_of(st.none(), st.integers(1, 1000)),
    splits=st.one_of(st.none(), st.integers(1, 1000)),
)
def test_forward_layout_gives_every_program_work_for_every_config(kernels, b, n, sms, groups, splits) -> None:
    configs = kernels._hopper_forward_configs()
    max_m = max(c.kwargs["BLOCK_M"] for c in configs)
    max_n = max(c.kwargs["BLOCK_N"] for c in configs)
    for config in configs:
        g, s = kernels._forward_layout(b, n, max_m, max_n, sms, groups, splits)
        block_m, block_n = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
        assert 1 <= g <= math.ceil(b / block_m) and 1 <= s <= math.ceil(n / block_n)
        if groups is None:
            assert g <= 2 * sms  # bounds the (G, n) column-partial buffer
            per_group = math.ceil(math.ceil(b / max_m) / g)
            assert (per_group - 1) * g < math.ceil(b / max_m)  # balanced: no group is left idle


def test_flop_accounting_matches_design() -> None:
    kernels = importlib.import_module("hardbatch.losses.triton_kernels")
    b, n, d = 1000, 2000, 384
    fast = kernels.forward_flops(b, n, d) + kernels.backward_flops(b, n, d)
    det = kernels.forward_flops(b, n, d) + kernels.backward_flops(b, n, d, deterministic=True)
    assert fast == 8 * b * n * d and det == 10 * b * n * d
