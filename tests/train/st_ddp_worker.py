"""One rank of a 2-process (gloo) SentenceTransformerTrainer run with a GCBS sampler; run under torchrun.

argv: OUT MODEL_DIR PAIRS_JSONL STOP_AT(0 = none) RESUME(0/1) CALLBACK(0/1) REPORT_JSON
Rank 0 writes REPORT_JSON: the epochs the sampler re-mined in this process and its last epoch batches.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from functools import partial

import torch

torch.set_num_threads(1)
_STATE: dict = {}


class _Stop(RuntimeError):
    pass


def _make_sampler(dataset, **kwargs):
    from hardbatch.samplers import GCBSBatchSampler, model_embed_fn

    embed_fn = model_embed_fn(_STATE["model"], _STATE["pairs"], batch_size=16, device="cpu")
    sampler = GCBSBatchSampler(dataset, embed_fn=embed_fn, target_degree=4, **kwargs)
    _STATE["sampler"] = sampler
    return sampler


def main() -> None:
    out, model_dir, pairs_path, stop_at, resume, callback, report = sys.argv[1:8]
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from transformers import TrainerCallback

    from hardbatch.data import load_pairs
    from hardbatch.embed.models import load_model
    from hardbatch.losses import HardbatchInfoNCELoss
    from hardbatch.samplers.st_callback import HardbatchSamplerCallback

    model = load_model(model_dir, device="cpu")
    pairs = load_pairs(pairs_path)
    _STATE.update(model=model, pairs=pairs)

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if int(stop_at) and state.global_step == int(stop_at):
                raise _Stop

    args = SentenceTransformerTrainingArguments(
        output_dir=out, per_device_train_batch_size=8, num_train_epochs=3, learning_rate=5e-3,
        batch_sampler=partial(_make_sampler), save_strategy="steps", save_steps=1, report_to="none",
        seed=0, use_cpu=True, ddp_backend="gloo", dataloader_drop_last=True, disable_tqdm=True,
        logging_steps=100,
    )  # fmt: skip
    callbacks = [StopAt()] + ([HardbatchSamplerCallback()] if int(callback) else [])
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=pairs.to_hf(), loss=HardbatchInfoNCELoss(model, scale=20.0),
        callbacks=callbacks,
    )  # fmt: skip
    with contextlib.suppress(_Stop):
        trainer.train(resume_from_checkpoint=bool(int(resume)) or None)
    sampler = _STATE["sampler"]
    if int(os.environ.get("RANK", "0")) == 0:
        with open(report, "w", encoding="utf-8") as handle:
            json.dump({"remined": [h["epoch"] for h in sampler.history], "epoch": sampler.epoch,
                       "world_size": sampler.world_size, "cache": sampler._cache}, handle)  # fmt: skip


if __name__ == "__main__":
    main()
