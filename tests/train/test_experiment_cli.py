"""``hardbatch experiment`` end to end: a 2-cell grid with the tiny model (the grid logic: test_experiment)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from hardbatch.app.cli.main import app


def test_experiment_command_runs_a_tiny_grid(tmp_path, pairs_files, tiny_model_dir):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path / "grid"
        args = ["--quiet", "experiment", "-o", str(out), "--samplers", "random,b3", "--batch-sizes", "8"]
        args += ["--seeds", "0", "--train-pairs", "32", "--test-pairs", "0", "--max-seq-length", "32"]
        args += ["--lr", "1e-3", "--model", str(tiny_model_dir)]
        args += ["--train-data", str(pairs_files["train"]), "--test-data", str(pairs_files["eval"])]
        result = CliRunner().invoke(app, args)
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    assert "# Quality grid" in result.output and "table:" in result.output
    summary = json.loads((out / "summary.json").read_text())
    cells = {(c["sampler"], c["batch_size"]): c for c in summary["cells"]}
    assert set(cells) == {("random", 8), ("b3", 8)}
    assert cells[("random", 8)]["steps"] == cells[("b3", 8)]["steps"] == 4  # 32 pairs, batches of 8
    # The options reach the grid (defaults would be 5e-5, 64 tokens, 1024 pairs, all four samplers).
    config = summary["config"]
    assert (config["lr"], config["max_seq_length"], config["train_pairs"]) == (1e-3, 32, 32)
    assert config["samplers"] == ["random", "b3"] and config["test_pairs"] is None
    assert 0 <= cells[("b3", 8)]["ndcg@10"]["mean"] <= 1 and "ndcg@10" in summary["frozen"]
    assert (out / "summary.md").exists() and (out / "summary.png").stat().st_size > 1000
