"""The ``>>>`` examples in hardbatch.losses (and hardbatch.device) run and print what they claim.

One test per module, so a broken example names its module; a module whose optional dependency is missing
(Triton, sentence-transformers) is skipped, not silently passed.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil

import pytest
import torch

import hardbatch.losses

_OPTIONAL = {
    "hardbatch.losses.triton_kernels": "triton",
    "hardbatch.losses.sentence_transformers": "sentence_transformers",
}
_LOSS_MODULES = sorted(f"hardbatch.losses.{m.name}" for m in pkgutil.iter_modules(hardbatch.losses.__path__))
MODULES = ["hardbatch.device", *_LOSS_MODULES]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    needs = _OPTIONAL.get(name)
    if needs is not None and importlib.util.find_spec(needs) is None:
        pytest.skip(f"{needs} not installed")
    module = importlib.import_module(name)
    torch.manual_seed(0)
    result = doctest.testmod(module, extraglobs={"torch": torch}, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples failed in {name}"


def test_the_doctest_runner_sees_examples():
    """Guards the test above against passing vacuously (doctest finding no examples at all)."""
    module = importlib.import_module("hardbatch.losses.info_nce")
    assert doctest.testmod(module, extraglobs={"torch": torch}).attempted > 0
