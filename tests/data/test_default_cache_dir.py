"""``default_cache_dir``: $HARDBATCH_CACHE (user-expanded) or ~/.cache/hardbatch, never the repository."""

from __future__ import annotations

from pathlib import Path

from hardbatch.data.cache import codesearch_cache_dir, default_cache_dir


def test_environment_variable_wins_and_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HARDBATCH_CACHE", "~/elsewhere")
    assert default_cache_dir() == tmp_path / "elsewhere"
    assert codesearch_cache_dir() == tmp_path / "elsewhere" / "codesearch"


def test_default_is_under_the_home_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("HARDBATCH_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == Path.home() / ".cache" / "hardbatch" == tmp_path / ".cache" / "hardbatch"
    monkeypatch.setenv("HARDBATCH_CACHE", "")  # empty counts as unset
    assert default_cache_dir() == tmp_path / ".cache" / "hardbatch"
