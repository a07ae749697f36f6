"""Written files follow the umask (not mkstemp's 0600) and a replaced file keeps its permissions."""

from __future__ import annotations

import os
import stat

import pytest

from hardbatch.io import atomic_write, current_umask, write_json


@pytest.fixture
def umask():
    def set_mask(mask):
        os.umask(mask)

    before = os.umask(0o022)
    os.umask(before)
    yield set_mask
    os.umask(before)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_new_files_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    assert current_umask() == mask
    write_json(tmp_path / "a.json", {"x": 1})
    with atomic_write(tmp_path / "b.bin", "wb") as handle:
        handle.write(b"x")
    assert _mode(tmp_path / "a.json") == _mode(tmp_path / "b.bin") == 0o666 & ~mask


def test_replacing_a_file_never_tightens_it(tmp_path, umask):
    umask(0o077)
    target = tmp_path / "shared.json"
    target.write_text("{}")
    target.chmod(0o664)
    write_json(target, {"x": 2})
    assert _mode(target) == 0o664 and target.read_text().startswith("{")


def test_data_convert_keeps_an_existing_files_mode(tmp_path, umask):
    from typer.testing import CliRunner

    from hardbatch.app.cli.main import app
    from hardbatch.data import PairDataset

    umask(0o022)
    source = PairDataset(["q a", "q b"], ["p a", "p b"]).save(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(app, ["data", "convert", str(source), str(out)])
    assert result.exit_code == 0, result.output
    assert _mode(out) == 0o644
    out.chmod(0o664)
    result = CliRunner().invoke(app, ["data", "convert", str(source), str(out)])
    assert result.exit_code == 0, result.output
    assert _mode(out) == 0o664
