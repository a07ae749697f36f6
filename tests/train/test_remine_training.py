"""``TrainConfig.remine_every`` (``--remine-every``): the trainer re-mines B3 with the student, resumably."""

from __future__ import annotations

import json

import pytest
import torch

from hardbatch.train import TrainConfig, Trainer, train

B3_OPTIONS = {"mine_options": {"cluster_size": 4, "skip": 1, "window": 8, "device": "cpu"}}


def _config(output_dir, pairs_files, model, **overrides):
    settings = dict(
        data=str(pairs_files["train"]),
        eval_data=str(pairs_files["eval"]),
        output_dir=str(output_dir),
        model=str(model),
        sampler="b3",
        sampler_options=B3_OPTIONS,
        remine_every=2,
        batch_size=8,
        epochs=4,  # 4 steps per epoch; re-mined at the start of epoch 2 (step 8)
        lr=1e-3,
        max_seq_length=32,
        log_every=1,
        save_every=3,
        eval_batch_size=16,
        seed=7,
        device="cpu",
        write_report=False,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def _records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def _weights(path):
    from sentence_transformers import SentenceTransformer

    return {k: v.clone() for k, v in SentenceTransformer(str(path), device="cpu").state_dict().items()}


class _Crash(RuntimeError):
    pass


class _SpyTrainer(Trainer):
    """Records the batch of every step."""

    def _collate(self, indices):
        self.batches = [*getattr(self, "batches", []), sorted(indices)]
        return super()._collate(indices)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, pairs_files, tiny_model_dir):
    root = tmp_path_factory.mktemp("remine-reference")
    torch.set_num_threads(1)
    # The first run in a process draws from torch's global RNG once more than later ones (one-time
    # set-up); a one-step warm-up makes the reference comparable with the runs of the tests.
    train(_config(root / "warm-up", pairs_files, tiny_model_dir, max_steps=1, save_final=False))
    run = root / "run"
    train(_config(run, pairs_files, tiny_model_dir))
    return run


def test_remines_are_recorded_and_change_the_run(reference, tmp_path, pairs_files, tiny_model_dir):
    result = json.loads((reference / "result.json").read_text())
    assert result["sampler_config"]["remines"] == 1 and result["sampler_config"]["remine_every"] == 2
    assert result["config"]["remine_every"] == 2
    from hardbatch.device import fast_bf16_matmul

    assert result["training_precision"] == ("bf16" if fast_bf16_matmul("cpu") else "fp32")  # "auto" here
    spies = {}
    for remine_every in (2, None):
        spies[remine_every] = _SpyTrainer(
            _config(tmp_path / f"run-{remine_every}", pairs_files, tiny_model_dir, remine_every=remine_every)
        )
        spies[remine_every].fit()
    remined, static = spies[2].batches, spies[None].batches
    # Epochs 0-1 (steps 1-8) come from the original plan, epochs 2-3 from the student's plan.
    assert remined[:8] == static[:8]
    assert remined[8:] != static[8:]


@pytest.mark.parametrize(
    "crash_step", [11, 14]
)  # checkpoints: step 9 (mid-epoch 2), step 12 (end of epoch 2)
def test_resume_after_a_remine_is_exact(reference, tmp_path, pairs_files, tiny_model_dir, crash_step):
    def crash(trainer, state):
        if state.step == crash_step:
            raise _Crash

    run = tmp_path / "run"
    with pytest.raises(_Crash):
        train(_config(run, pairs_files, tiny_model_dir), callbacks=[crash])
    train(_config(run, pairs_files, tiny_model_dir, resume=True))
    assert _records(run) == _records(reference)
    expected, got = _weights(reference / "final"), _weights(run / "final")
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert json.loads((run / "result.json").read_text())["sampler_config"]["remines"] == 1
