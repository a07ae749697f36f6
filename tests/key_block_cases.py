"""Bad key-block options every entry point must refuse up front: case name → (options, message pattern)."""

from __future__ import annotations

from typing import Any


def bad_key_blocks(stage: str, approximate: dict[str, Any]) -> dict[str, tuple[dict[str, Any], str]]:
    """The shared cases plus a budget too small for ``stage`` and key blocks with an ``approximate`` backend.

    Args:
        stage: the exact pass named in the budget error ("exact kNN", "threshold graph").
        approximate: the option selecting an approximate backend, e.g. ``{"knn": "hnsw"}``.
    """
    name = next(iter(approximate))
    return {
        "zero block": (dict(key_block_size=0), "key_block_size must be a positive integer"),
        "garbage block": (dict(key_block_size="big"), "key_block_size must be a positive integer or 'auto'"),
        "auto without budget": (dict(key_block_size="auto"), "needs memory_budget"),
        "block and budget": (dict(key_block_size=37, memory_budget="1GiB"), "not both"),
        "budget too small": (dict(memory_budget="1KiB"), f"too small for the {stage}"),
        "garbage budget": (dict(memory_budget="lots"), "memory_budget must be a size"),
        "approximate": (dict(key_block_size=37, **approximate), f"{name}='exact' only"),
    }
