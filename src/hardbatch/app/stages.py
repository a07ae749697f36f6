"""Pipeline stages shared by the demo (:mod:`hardbatch.app.demo`) and the quality grid
(:mod:`hardbatch.app.experiment`): mine a B3 plan from teacher embeddings, score batches under the teacher,
train one run.

Both configs carry the fields read here (``cluster_size``, ``skip``, ``window``; ``lr``, ``scale``,
``max_seq_length``), so the two drivers mine, score and train the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["mine_b3_plan", "teacher_hardness", "train_run"]


def mine_b3_plan(
    embeddings: Any,
    train: Any,
    config: Any,
    *,
    batch_size: int,
    seed: int,
    show_progress: bool | None = None,
    community: str = "metis",
) -> Any:
    """B3 plan of ``train`` from its teacher embeddings, on the CPU (time and memory: see ``mine_b3``).

    Args:
        embeddings: teacher embeddings with ``query`` and ``positive`` (N, d) float32 arrays.
        train: the :class:`~hardbatch.data.PairDataset` they embed (positive texts and fingerprint).
        config: any object with ``cluster_size``, ``skip`` and ``window``.
        batch_size: |B|, a multiple of ``config.cluster_size``.
        seed: METIS / repair / shuffle seed.
        show_progress: passed to ``mine_b3``.
        community: ``mine_b3``'s clustering method (``"metis"``, ``"metis-kway"``, ``"leiden"``, ``"louvain"``).

    Returns:
        The :class:`~hardbatch.mining.BatchPlan`.
    """
    from hardbatch.mining import mine_b3

    return mine_b3(
        embeddings.query,
        embeddings.positive,
        batch_size=batch_size,
        cluster_size=config.cluster_size,
        skip=config.skip,
        window=config.window,
        seed=seed,
        community=community,
        positive_texts=train.positives,
        dataset_hash=train.fingerprint,
        device="cpu",
        show_progress=show_progress,
    )


def teacher_hardness(embeddings: Any, batches: Any, scale: float) -> dict[str, float]:
    """Summary of :func:`~hardbatch.evaluate.hardness.batch_hardness` of ``batches`` under the teacher."""
    from hardbatch.evaluate.hardness import batch_hardness, summarize_hardness

    return summarize_hardness(batch_hardness(embeddings.query, embeddings.positive, batches, scale=scale))


def train_run(
    config: Any,
    *,
    data: Any,
    eval_data: Any,
    output_dir: Path,
    model: str,
    sampler: str,
    sampler_options: dict[str, Any],
    batch_size: int,
    seed: int,
    **settings: Any,
) -> Any:
    """Train one run (overwriting ``output_dir``) with ``config``'s ``lr``, ``scale`` and ``max_seq_length``.

    Args:
        config: any object with ``lr``, ``scale`` and ``max_seq_length``.
        data, eval_data, output_dir, model, sampler, sampler_options, batch_size, seed: the run's
            :class:`~hardbatch.train.TrainConfig` fields.
        settings: further ``TrainConfig`` fields (epochs, max_steps, log_every, ...).

    Returns:
        The trainer's result (``steps``, ``metrics``, ``seconds``).
    """
    from hardbatch.train import TrainConfig
    from hardbatch.train import train as run_training

    return run_training(
        TrainConfig(
            data=data,
            eval_data=eval_data,
            output_dir=str(output_dir),
            model=model,
            sampler=sampler,
            sampler_options=sampler_options,
            batch_size=batch_size,
            lr=config.lr,
            scale=config.scale,
            max_seq_length=config.max_seq_length,
            seed=seed,
            overwrite=True,
            **settings,
        )
    )
