from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HARDBATCH_PROGRESS", "0")

import pytest
from hypothesis import settings

# Hypothesis profiles: "ci" (default) keeps the whole suite within minutes; "slow" (``make test-slow``,
# HYPOTHESIS_PROFILE=slow) runs every property with >= 200 examples and ignores the per-test CI caps
# (see tests/samplers/properties.py).
settings.register_profile("ci", max_examples=30, deadline=None)
settings.register_profile("slow", max_examples=250, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own ``$HARDBATCH_CACHE``: the suite never writes into the user's
    ``~/.cache/hardbatch`` (embedding caches of test data piled up there, one folder per run)."""
    monkeypatch.setenv("HARDBATCH_CACHE", str(tmp_path_factory.mktemp("hardbatch-cache")))


@pytest.fixture(scope="session")
def tiny_model():
    """A random 2-layer BERT (hidden 32) with the MiniLM tokenizer: no download, fast on CPU."""
    from hardbatch.embed.models import make_tiny_model

    return make_tiny_model()
