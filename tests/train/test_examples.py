"""The documented sentence-transformers recipe (examples/st_trainer_b3.py) runs with our sampler and loss."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "st_trainer_b3.py"


def test_st_trainer_example_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("st_trainer_b3", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    metrics = module.main(["--tiny", "--output", str(tmp_path)])
    assert set(metrics) >= {"ndcg@10", "mrr@10"}
    assert (tmp_path / "final" / "modules.json").exists()
