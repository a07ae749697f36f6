from __future__ import annotations

import errno
import random

import numpy as np
import pytest
import torch

from hardbatch.train.checkpoint import (
    capture_rng_state,
    latest_checkpoint,
    list_checkpoints,
    load_trainer_state,
    replace_dir_atomically,
    restore_rng_state,
    save_checkpoint,
)


class _FakeModel:
    def __init__(self, fail: bool = False, error: Exception | None = None) -> None:
        self.fail, self.error = fail, error

    def save(self, path: str, create_model_card: bool = False) -> None:
        import pathlib

        pathlib.Path(path).mkdir(parents=True)
        (pathlib.Path(path) / "weights.txt").write_text("w")
        if self.fail:
            raise self.error or RuntimeError("disk full")


def test_keeps_the_newest_and_reads_back(tmp_path):
    for step in (2, 4, 6):
        save_checkpoint(tmp_path, step, _FakeModel(), {"step": step}, keep=2)
    assert [c.step for c in list_checkpoints(tmp_path)] == [4, 6]
    latest = latest_checkpoint(tmp_path)
    assert latest.step == 6 and (latest.model_path / "weights.txt").exists()
    assert load_trainer_state(latest) == {"step": 6}


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path):
    save_checkpoint(tmp_path, 1, _FakeModel(), {"step": 1})
    with pytest.raises(RuntimeError):
        save_checkpoint(tmp_path, 2, _FakeModel(fail=True), {"step": 2})
    assert [c.step for c in list_checkpoints(tmp_path)] == [1]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]


def test_a_full_disk_is_an_os_error_naming_the_checkpoint(tmp_path):
    # safetensors words a full disk as its own exception: without the translation the CLI showed a traceback.
    safetensors_error = RuntimeError(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
    )
    with pytest.raises(OSError, match="No space left on device") as caught:
        save_checkpoint(tmp_path, 3, _FakeModel(fail=True, error=safetensors_error), {"step": 3})
    assert caught.value.errno == errno.ENOSPC and "step-00000003" in caught.value.filename
    assert list_checkpoints(tmp_path) == []
    with pytest.raises(ValueError, match="a bug"):  # anything else keeps its type (and traceback)
        save_checkpoint(tmp_path, 4, _FakeModel(fail=True, error=ValueError("a bug")), {"step": 4})


def test_incomplete_folders_are_ignored(tmp_path):
    (tmp_path / "checkpoints" / "step-00000009" / "model").mkdir(parents=True)  # no trainer_state.pt
    (tmp_path / "checkpoints" / ".tmp-step-00000010-1").mkdir()
    assert latest_checkpoint(tmp_path) is None


def test_replace_dir_atomically(tmp_path):
    target = tmp_path / "final"
    for content in ("one", "two"):
        tmp = tmp_path / ".final.tmp"
        tmp.mkdir()
        (tmp / "f.txt").write_text(content)
        replace_dir_atomically(tmp, target)
    assert (target / "f.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_rng_round_trip():
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


class _Payload:
    """A pickle that creates a file when unpickled (what a crafted trainer_state.pt would do)."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_a_crafted_trainer_state_is_refused_not_executed(tmp_path):
    from hardbatch.errors import DataError

    checkpoint = save_checkpoint(tmp_path, 1, _FakeModel(), {"step": 1})
    marker = tmp_path / "pwned"
    torch.save({"format": 1, "trainer": _Payload(str(marker))}, checkpoint.state_path)
    with pytest.raises(DataError, match="never unpickled"):
        load_trainer_state(checkpoint)
    assert not marker.exists()


def test_a_truncated_trainer_state_is_a_data_error(tmp_path):
    from hardbatch.errors import DataError

    checkpoint = save_checkpoint(tmp_path, 1, _FakeModel(), {"step": 1, "w": torch.ones(1000)})
    data = checkpoint.state_path.read_bytes()
    checkpoint.state_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"trainer_state\.pt"):
        load_trainer_state(checkpoint)


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    random.random(), np.random.rand(), np.random.randn()  # leaves a cached gaussian in numpy's state
    checkpoint = save_checkpoint(tmp_path, 1, _FakeModel(), {"rng": [capture_rng_state()]})
    first = (random.random(), np.random.rand(), np.random.randn(), torch.rand(1).item())
    restore_rng_state(load_trainer_state(checkpoint)["rng"][0])
    assert (random.random(), np.random.rand(), np.random.randn(), torch.rand(1).item()) == first
