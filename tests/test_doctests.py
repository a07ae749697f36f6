"""Every ``>>>`` example in the library's docstrings runs (and must print what it says)."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil

import pytest

import hardbatch

# The application's commands are exercised through the CLI tests; the library's examples are here.
_SKIP_PREFIXES = ("hardbatch.app",)
_SKIP_MODULES = {"hardbatch.__main__"}
# Modules whose optional dependency may be missing: skipped then, not silently passed.
_OPTIONAL = {
    "hardbatch.losses.triton_kernels": "triton",
    "hardbatch.losses.triton_sigmoid": "triton",
    "hardbatch.embed.openclip": "open_clip",
}


def _library_modules() -> list[str]:
    names = [
        info.name
        for info in pkgutil.walk_packages(hardbatch.__path__, prefix="hardbatch.")
        if not info.name.startswith(_SKIP_PREFIXES) and info.name not in _SKIP_MODULES
    ]
    return sorted(["hardbatch", *names])


@pytest.mark.parametrize("name", _library_modules())
def test_docstring_examples_run(name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # examples that name a file write nothing into the repository
    monkeypatch.setenv("HARDBATCH_PROGRESS", "0")
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    assert result.failed == 0, (
        f"{result.failed} of {result.attempted} examples in {name} failed (run with -s)"
    )


def test_the_library_has_examples():
    """The suite above would pass vacuously if module discovery broke: count the examples it finds."""
    finder = doctest.DocTestFinder()
    total = sum(
        len(test.examples)
        for name in _library_modules()
        if name not in _OPTIONAL
        for test in finder.find(importlib.import_module(name))
    )
    assert total >= 150
