from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model):
    """The tiny model saved to disk, so path-based loading and file fingerprints can be tested cheaply."""
    path = tmp_path_factory.mktemp("tiny_model")
    tiny_model.save(str(path))
    return path
