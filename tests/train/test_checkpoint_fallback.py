"""A truncated newest checkpoint is skipped: resume falls back to the previous intact one."""

from __future__ import annotations

import warnings

import pytest
import torch

from hardbatch.errors import DataError
from hardbatch.train.checkpoint import Checkpoint, checkpoint_problem, latest_checkpoint, save_checkpoint


class _SafetensorsModel:
    """Saves a real (small) model.safetensors, as sentence-transformers does."""

    def save(self, path: str, create_model_card: bool = False) -> None:
        import pathlib

        from safetensors.torch import save_file

        pathlib.Path(path).mkdir(parents=True)
        save_file({"w": torch.arange(4096, dtype=torch.float32)}, f"{path}/model.safetensors")


def _run(tmp_path):
    for step in (3, 6):
        save_checkpoint(tmp_path, step, _SafetensorsModel(), {"step": step, "x": torch.ones(1000)}, keep=2)


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_intact_checkpoints_have_no_problem(tmp_path):
    _run(tmp_path)
    newest = latest_checkpoint(tmp_path)
    assert newest.step == 6 and checkpoint_problem(newest) is None


@pytest.mark.parametrize("damaged", ["trainer_state.pt", "model/model.safetensors"])
def test_truncated_newest_falls_back_with_a_warning(tmp_path, damaged):
    _run(tmp_path)
    _truncate(tmp_path / "checkpoints" / "step-00000006" / damaged)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = latest_checkpoint(tmp_path)
    assert found.step == 3
    assert any("step-00000006" in str(w.message) and "truncated" in str(w.message) for w in caught)


def test_truncated_safetensors_header_is_seen(tmp_path):
    _run(tmp_path)
    weights = tmp_path / "checkpoints" / "step-00000006" / "model" / "model.safetensors"
    _truncate(weights, keep=0.001)  # shorter than its own header
    damaged = Checkpoint(6, tmp_path / "checkpoints" / "step-00000006")
    assert checkpoint_problem(damaged) == "model/model.safetensors: truncated"


def test_no_intact_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    _run(tmp_path)
    for step in ("step-00000003", "step-00000006"):
        _truncate(tmp_path / "checkpoints" / step / "trainer_state.pt")
    with pytest.raises(DataError, match="no intact checkpoint to resume from"):
        latest_checkpoint(tmp_path)
