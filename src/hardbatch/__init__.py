"""hardbatch: break the batch barrier of contrastive learning.

Mined hard batches (B3, GCBS and the baselines, as torch / sentence-transformers batch samplers) and an
exact InfoNCE/CLIP loss whose memory grows linearly with the batch (tiled; CPU, Triton, torch.distributed),
with gradient caching.

The main names are importable from here; each is loaded on first use, so ``import hardbatch`` itself
imports neither torch nor sentence-transformers::

    import hardbatch
    plan = hardbatch.mine_b3(query_emb, positive_emb, batch_size=64, cluster_size=32)
    sampler = hardbatch.B3BatchSampler(train_pairs, batch_size=64, plan=plan)
    loss = hardbatch.info_nce(query, keys, scale=20.0)

Packages: ``data`` (pairs), ``embed`` (teacher/student embeddings), ``graph`` (kNN, graphs, partitions),
``mining`` (B3, GCBS plans), ``samplers``, ``losses``, ``train``, ``evaluate``; ``hardbatch.app`` is the
command line on top (see ``docs/architecture.md``).
"""

from __future__ import annotations

from hardbatch._lazy import lazy_getattr

__version__ = "0.1.0"

_EXPORTS = {
    "info_nce": "hardbatch.losses",
    "InfoNCELoss": "hardbatch.losses",
    "GradCache": "hardbatch.losses",
    "HardbatchInfoNCELoss": "hardbatch.losses",
    "mine_b3": "hardbatch.mining",
    "mine_gcbs": "hardbatch.mining",
    "BatchPlan": "hardbatch.mining",
    "B3BatchSampler": "hardbatch.samplers",
    "GCBSBatchSampler": "hardbatch.samplers",
    "SamplerInputs": "hardbatch.samplers",
    "build_sampler": "hardbatch.samplers",
    "sampler_factory": "hardbatch.samplers",
    "load_pairs": "hardbatch.data",
    "PairDataset": "hardbatch.data",
    "evaluate_model": "hardbatch.evaluate",
    "TrainConfig": "hardbatch.train",
    "HardbatchError": "hardbatch.errors",
}

__all__ = ["__version__", *_EXPORTS]

__getattr__ = lazy_getattr(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted(__all__)
