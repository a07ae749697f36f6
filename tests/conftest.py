from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HARDBATCH_PROGRESS", "0")

import pytest
from hypothesis import settings

settings.register_profile("ci", max_examples=30, deadline=None)
settings.load_profile("ci")


@pytest.fixture(scope="session")
def tiny_model():
    """A random 2-layer BERT (hidden 32) with the MiniLM tokenizer: no download, fast on CPU."""
    from hardbatch.embed.models import make_tiny_model

    return make_tiny_model()
