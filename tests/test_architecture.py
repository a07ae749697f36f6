"""The package boundaries of docs/architecture.md, checked: import contracts, a light ``import hardbatch``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True, cwd=ROOT
    )
    return result.stdout


def test_import_contracts_hold():
    """pyproject's import-linter contracts: layers (app on top, graph/losses low) and no typer below app."""
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (the dev extra)")
    result = subprocess.run([str(lint)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_import_hardbatch_is_light():
    """``import hardbatch`` loads neither torch nor the CLI / drawing libraries; names resolve on access."""
    out = _run_python(
        "import sys, json, hardbatch\n"
        "before = [m for m in ('torch', 'typer', 'rich', 'matplotlib', 'sentence_transformers') if m in sys.modules]\n"
        "hardbatch.info_nce, hardbatch.mine_b3, hardbatch.BatchPlan\n"
        "after = [m for m in ('typer', 'matplotlib') if m in sys.modules]\n"
        "print(json.dumps([before, after]))"
    )
    before, after = json.loads(out)
    assert before == []
    assert after == []


def test_library_packages_never_load_typer_or_matplotlib():
    out = _run_python(
        "import sys, json\n"
        "import hardbatch.data, hardbatch.embed, hardbatch.graph, hardbatch.mining, hardbatch.samplers\n"
        "import hardbatch.losses, hardbatch.train, hardbatch.evaluate\n"
        "print(json.dumps([m for m in ('typer', 'matplotlib', 'hardbatch.app') if m in sys.modules]))"
    )
    assert json.loads(out) == []


@pytest.mark.parametrize(
    "name",
    [
        "info_nce", "InfoNCELoss", "GradCache", "HardbatchInfoNCELoss", "mine_b3", "mine_gcbs", "BatchPlan",
        "B3BatchSampler", "GCBSBatchSampler", "build_sampler", "load_pairs", "evaluate_model",
    ],
)  # fmt: skip
def test_public_names_import_from_the_top(name):
    import hardbatch

    assert name in hardbatch.__all__
    obj = getattr(hardbatch, name)
    assert getattr(obj, "__name__", name) == name


def test_unknown_top_level_name_is_an_attribute_error():
    import hardbatch

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        hardbatch.nope  # noqa: B018
