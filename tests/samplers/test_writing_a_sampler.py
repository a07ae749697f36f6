"""docs/samplers.md "Writing a sampler": the example there is one file plus a registry entry, and works."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from hardbatch.errors import ConfigError
from hardbatch.samplers import SAMPLERS, SamplerInputs, build_sampler, resolve_inputs

DOC = Path(__file__).resolve().parents[2] / "docs" / "samplers.md"


def _documented_sampler() -> type:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Writing a sampler") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {"__name__": "docs_example"}
    exec(compile(code, str(DOC), "exec"), namespace)
    return namespace["LengthBatchSampler"]


@pytest.fixture(scope="module")
def registered():
    cls = _documented_sampler()
    if "length" not in SAMPLERS:
        SAMPLERS.register("length", cls)
    return cls


def test_documented_sampler_builds_from_shared_inputs(registered):
    rng = np.random.default_rng(0)
    query = rng.normal(size=(40, 8)).astype(np.float32) * rng.uniform(0.5, 2.0, size=(40, 1))
    inputs = SamplerInputs(num_examples=40, teacher=(query, query), drop_last=True, world_size=1)
    sampler = build_sampler("length", inputs, 8)
    batches = sampler.batches(0)
    assert sorted(i for b in batches for i in b) == list(range(40))
    norms = np.linalg.norm(query, axis=1)
    # Batches group similar norms: the spread inside a batch is far below the spread of the data.
    inside = np.mean([np.ptp(norms[b]) for b in batches])
    assert inside < 0.5 * np.ptp(norms)
    assert sampler.batches(1) != batches  # the batch order changes with the epoch
    assert resolve_inputs("length", inputs).keys() == {"query_emb"}


def test_inspect_reaches_a_registered_sampler(registered):
    from hardbatch.app.cli.inspect_cmd import build_strategy_batches
    from hardbatch.data import PairDataset

    query = np.random.default_rng(1).normal(size=(32, 8)).astype(np.float32)
    data = PairDataset([f"q{i}" for i in range(32)], [f"p{i}" for i in range(32)])
    batchings, _, details = build_strategy_batches(["length", "random"], data, 8, query, query, seed=0)
    assert [len(b) for b in batchings["length"]] == [8, 8, 8, 8]
    assert details["length"]["config"]["batch_size"] == 8


def test_a_name_cannot_be_registered_twice(registered):
    with pytest.raises(ConfigError, match="already registered"):
        SAMPLERS.register("random", registered)
