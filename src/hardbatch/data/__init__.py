"""Pair datasets: loading, validation and the built-in ``codesearch`` corpus.

>>> from hardbatch.data import load_pairs
>>> ds = load_pairs([{"query": "add two numbers", "positive": "def f(a, b): return a + b"}])
>>> len(ds), ds.ids
(1, ['row-0'])
"""

from __future__ import annotations

from hardbatch.data.cache import (
    CodeSearchBuild,
    build_codesearch,
    codesearch_cache_dir,
    default_cache_dir,
    load_codesearch,
)
from hardbatch.data.codesearch import DEFAULT_PACKAGES, CodeSearchConfig, extract_codesearch
from hardbatch.data.loaders import CANONICAL_COLUMNS, load_pairs
from hardbatch.data.pairs import PairDataset

__all__ = [
    "CANONICAL_COLUMNS",
    "DEFAULT_PACKAGES",
    "CodeSearchBuild",
    "CodeSearchConfig",
    "PairDataset",
    "build_codesearch",
    "codesearch_cache_dir",
    "default_cache_dir",
    "extract_codesearch",
    "load_codesearch",
    "load_pairs",
]
