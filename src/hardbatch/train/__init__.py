"""Training: a plain PyTorch loop (samplers × tiled InfoNCE × gradient cache × DDP) with exact resumption.

Entry points: :func:`train` / :class:`Trainer` with a :class:`TrainConfig`; ``hardbatch train`` on the
command line. See ``docs/training.md``.
"""

from __future__ import annotations

from typing import Any

from hardbatch.train.config import TrainConfig

__all__ = ["TrainConfig", "TrainResult", "Trainer", "TrainerState", "train"]

_TRAINER_NAMES = {"Trainer", "TrainerState", "TrainResult", "train"}


def __getattr__(name: str) -> Any:
    # The trainer imports torch and sentence-transformers (seconds); TrainConfig alone does not, so the
    # CLI can build `hardbatch train`'s options from it without slowing down every `hardbatch --help`.
    if name in _TRAINER_NAMES:
        from hardbatch.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'hardbatch.train' has no attribute {name!r}")
