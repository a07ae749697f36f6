"""``HardbatchSamplerCallback``: exact epochs and resumption for hardbatch samplers in ``SentenceTransformerTrainer``.

Two gaps of the sentence-transformers / transformers / accelerate stack, closed by one callback:

* Under DDP accelerate wraps the batch sampler in ``BatchSamplerShard``, whose loader's ``set_epoch`` does
  not reach our sampler in every release; ``on_epoch_begin`` sets the sampler's epoch from the trainer's
  own epoch counter, so a resumed run continues at its epoch instead of epoch 0.
* transformers resumes by skipping the batches already trained, but never calls the sampler's
  ``load_state_dict``: a GCBS sampler would re-mine the interrupted epoch with the *resumed* weights and
  yield other batches. ``on_save`` writes the sampler's state (epoch, GCBS epoch batches, B3 plan
  fingerprint) as JSON next to each checkpoint (``checkpoint-N/hardbatch_sampler.json``, rank 0, atomic);
  ``on_train_begin`` of a resumed run loads it, leaving the skipping to transformers.

Usage::

    trainer = SentenceTransformerTrainer(..., callbacks=[HardbatchSamplerCallback()])
    trainer.train(resume_from_checkpoint=True)

Cost: one JSON file per checkpoint, O(N) integers for GCBS (the epoch's batch order), O(1) otherwise.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from hardbatch.errors import DataError
from hardbatch.io import read_json, write_json
from hardbatch.samplers.base import HardBatchSampler

__all__ = ["STATE_FILE", "HardbatchSamplerCallback", "find_sampler"]

STATE_FILE = "hardbatch_sampler.json"


def find_sampler(dataloader: Any) -> HardBatchSampler | None:
    """The hardbatch sampler inside a (possibly accelerate-wrapped) data loader, or ``None``."""
    node = dataloader
    for _ in range(6):  # DataLoaderShard / SkipDataLoader -> BatchSamplerShard -> our sampler
        if isinstance(node, HardBatchSampler):
            return node
        node = getattr(node, "batch_sampler", None)
        if node is None:
            return None
    return None


class HardbatchSamplerCallback(TrainerCallback):
    """Keeps a hardbatch sampler's epoch in step with the trainer and restores its state on resume."""

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        sampler = find_sampler(kwargs.get("train_dataloader"))
        if sampler is None or not state.global_step:
            return
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / STATE_FILE
        if not path.is_file():
            return
        try:
            saved = read_json(path)
        except ValueError as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from exc
        # transformers skips the trained batches itself; restore the epoch's content, not the position.
        sampler.load_state_dict({**saved, "batches_done": 0})

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        sampler = find_sampler(kwargs.get("train_dataloader"))
        if sampler is not None:
            epoch = math.floor(float(state.epoch or 0.0) + 1e-6)
            if sampler.epoch != epoch:
                sampler.set_epoch(epoch)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        sampler = find_sampler(kwargs.get("train_dataloader"))
        if sampler is None or not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            write_json(folder / STATE_FILE, {**sampler.state_dict(), "written_by_pid": os.getpid()})
