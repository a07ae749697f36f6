"""The shared teacher-embedding options of ``mine b3``, ``mine gcbs`` and ``inspect``."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from hardbatch.app.cli.main import app
from hardbatch.app.cli.teacher import teacher_embeddings
from hardbatch.errors import ConfigError, DataError


class _Pairs:
    def __init__(self, rows: int) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return self.rows


def _save(tmp_path, name, rows, dim=8):
    path = tmp_path / name
    np.save(path, np.random.default_rng(rows).normal(size=(rows, dim)).astype(np.float32))
    return path


def test_given_files_are_loaded_and_checked_against_the_data(tmp_path):
    q, p = _save(tmp_path, "q.npy", 12), _save(tmp_path, "p.npy", 12)
    got = teacher_embeddings(
        _Pairs(12), "default", query_emb=q, positive_emb=p, emb_dir=None, max_seq_length=None
    )
    assert got.query.shape == got.positive.shape == (12, 8)
    assert got.query_path == q and got.positive_path == p
    with pytest.raises(DataError, match=r"q\.npy"):
        teacher_embeddings(
            _Pairs(13), "default", query_emb=q, positive_emb=p, emb_dir=None, max_seq_length=None
        )
    short = _save(tmp_path, "short.npy", 11)
    with pytest.raises(DataError, match=r"short\.npy"):
        teacher_embeddings(
            None, "default", query_emb=q, positive_emb=short, emb_dir=None, max_seq_length=None
        )


def test_one_file_or_nothing_at_all_is_refused(tmp_path):
    q = _save(tmp_path, "q.npy", 4)
    with pytest.raises(ConfigError, match="both --query-emb and --positive-emb"):
        teacher_embeddings(
            _Pairs(4), "default", query_emb=q, positive_emb=None, emb_dir=None, max_seq_length=None
        )
    with pytest.raises(ConfigError, match="give DATA"):
        teacher_embeddings(
            None, "default", query_emb=None, positive_emb=None, emb_dir=None, max_seq_length=None
        )
    result = CliRunner().invoke(app, ["mine", "b3", "--query-emb", str(q)])
    assert result.exit_code != 0
    assert "both --query-emb and --positive-emb" in str(result.exception) + result.output
