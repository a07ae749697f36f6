"""sentence-transformers path: a resumed SentenceTransformerTrainer continues the sampler's epoch exactly.

GCBS re-mines every epoch with the model being trained. Interrupted mid-epoch and resumed, transformers
skips the trained batches but never restores the sampler, so without the callback the interrupted epoch is
re-mined with the *resumed* weights: other batches, examples repeated or skipped.
"""

from __future__ import annotations

import contextlib
from functools import partial

import pytest

pytest.importorskip("sentence_transformers")


class _Stop(RuntimeError):
    pass


_CURRENT: dict = {}  # the run's model and data: transformers pickles the args, so the factory is global


def _make_sampler(dataset, **kwargs):
    from hardbatch.samplers import GCBSBatchSampler, model_embed_fn

    embed_fn = model_embed_fn(_CURRENT["model"], _CURRENT["pairs"], batch_size=16, device="cpu")
    sampler = GCBSBatchSampler(dataset, embed_fn=embed_fn, target_degree=4, **kwargs)
    _CURRENT["samplers"].append(sampler)
    return sampler


def _run(out, train_pairs, model_dir, *, resume, stop_at=None, callback=True):
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from transformers import TrainerCallback

    from hardbatch.embed.models import load_model
    from hardbatch.losses import HardbatchInfoNCELoss
    from hardbatch.samplers.st_callback import HardbatchSamplerCallback

    model = load_model(model_dir, device="cpu")
    _CURRENT.update(model=model, pairs=train_pairs, samplers=[])

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if stop_at is not None and state.global_step == stop_at:
                raise _Stop

    args = SentenceTransformerTrainingArguments(
        output_dir=str(out), per_device_train_batch_size=8, num_train_epochs=2, learning_rate=5e-3,
        batch_sampler=partial(_make_sampler), save_strategy="steps", save_steps=2, report_to="none",
        seed=0, use_cpu=True, dataloader_drop_last=True, disable_tqdm=True, logging_steps=100,
    )  # fmt: skip
    callbacks = [StopAt()] + ([HardbatchSamplerCallback()] if callback else [])
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=train_pairs.to_hf(),
        loss=HardbatchInfoNCELoss(model, scale=20.0), callbacks=callbacks,
    )  # fmt: skip
    with contextlib.suppress(_Stop):
        trainer.train(resume_from_checkpoint=resume or None)
    return _CURRENT["samplers"][-1]


@pytest.mark.parametrize("callback", [True, False], ids=["with-callback", "without"])
def test_resumed_st_trainer_continues_the_interrupted_gcbs_epoch(
    tmp_path, train_pairs, tiny_model_dir, callback
):
    import torch

    torch.set_num_threads(1)
    full = _run(tmp_path / "full", train_pairs, tiny_model_dir, resume=False)
    expected = full.history[1]["epoch"], full._cache  # epoch 1's batches, mined at its start
    # 4 steps per epoch; stopped at step 7, the newest checkpoint is step 6: mid-epoch 1.
    _run(tmp_path / "cut", train_pairs, tiny_model_dir, resume=False, stop_at=7, callback=callback)
    assert (tmp_path / "cut" / "checkpoint-6" / "hardbatch_sampler.json").is_file() == callback
    resumed = _run(tmp_path / "cut", train_pairs, tiny_model_dir, resume=True, callback=callback)
    assert expected[0] == 1 and resumed.epoch == 2
    if callback:  # the interrupted epoch comes from the checkpoint, exactly as first mined
        assert resumed._cache == expected[1]
        assert [h["epoch"] for h in resumed.history] == []
    else:  # the failure the callback fixes: epoch 1 is re-mined with the mid-epoch (resumed) weights
        assert [h["epoch"] for h in resumed.history] == [1]
