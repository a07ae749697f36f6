"""``resolve_model_path``: "default" is the packaged MiniLM; anything else must be a local directory."""

from __future__ import annotations

import pytest

from hardbatch.embed.models import DEFAULT_MODEL, resolve_model_path
from hardbatch.errors import ConfigError


def test_default_is_the_packaged_minilm():
    path = resolve_model_path(DEFAULT_MODEL)
    assert path.is_dir() and (path / "config.json").is_file()
    assert "minilm" in str(path).lower()


def test_a_local_directory_is_returned_and_user_paths_expand(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_path(tmp_path) == tmp_path
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "my-model").mkdir()
    (tmp_path / "my-model" / "modules.json").write_text("[]")
    assert resolve_model_path("~/my-model") == tmp_path / "my-model"


def test_a_folder_that_is_no_model_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="is an empty folder"):
        resolve_model_path(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"has no config\.json or modules\.json"):
        resolve_model_path(tmp_path)


def test_a_hub_name_is_refused_with_the_way_out(tmp_path):
    with pytest.raises(ConfigError, match="never downloads") as info:
        resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    assert "--model default" in str(info.value)
    with pytest.raises(ConfigError, match="missing"):
        resolve_model_path(tmp_path / "missing")
