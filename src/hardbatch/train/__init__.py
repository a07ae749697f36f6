"""Training: a plain PyTorch loop (samplers × tiled InfoNCE × gradient cache × DDP) with exact resumption.

Entry points: :func:`train` / :class:`Trainer` with a :class:`TrainConfig`; ``hardbatch train`` on the
command line. See ``docs/training.md``.
"""

from __future__ import annotations

from hardbatch.train.config import TrainConfig
from hardbatch.train.trainer import Trainer, TrainerState, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "Trainer", "TrainerState", "train"]
