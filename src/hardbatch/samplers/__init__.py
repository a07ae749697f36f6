"""Batch samplers: which examples share a batch."""

from __future__ import annotations

from hardbatch.samplers.b3 import B3BatchSampler
from hardbatch.samplers.base import HardBatchSampler

__all__ = ["B3BatchSampler", "HardBatchSampler"]
