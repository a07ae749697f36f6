"""Batch mining: turn teacher embeddings into batches of mutual hard negatives."""

from __future__ import annotations

from hardbatch.mining.b3 import cluster_hardness, mine_b3
from hardbatch.mining.gcbs import GCBSResult, GraphCollapseWarning, mine_gcbs
from hardbatch.mining.plan import BatchPlan

__all__ = ["BatchPlan", "GCBSResult", "GraphCollapseWarning", "cluster_hardness", "mine_b3", "mine_gcbs"]
