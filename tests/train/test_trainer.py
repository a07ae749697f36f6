from __future__ import annotations

import json

import pytest
import torch

from hardbatch.errors import ConfigError
from hardbatch.train import TrainConfig, Trainer, train

SAMPLER_OPTIONS = {
    "random": {},
    "nodup": {},
    "topic": {"n_clusters": 4},
    "source": {},
    "gcbs": {"target_degree": 8},
    # B3 mined lazily from teacher embeddings, with B3++ batch-level hard negatives.
    "b3": {
        "mine_options": {"cluster_size": 4, "skip": 1, "window": 8, "device": "cpu"},
        "num_hard_negatives": 2,
    },
}


def _config(tmp_path, data, eval_data, model, **overrides):
    settings = dict(
        data=data,
        eval_data=eval_data,
        output_dir=str(tmp_path / "run"),
        model=str(model),
        batch_size=8,
        epochs=1,
        lr=1e-3,
        max_seq_length=32,
        log_every=1,
        eval_batch_size=16,
        device="cpu",
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def _weights(path):
    from sentence_transformers import SentenceTransformer

    return {k: v.clone() for k, v in SentenceTransformer(str(path), device="cpu").state_dict().items()}


def _records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


class _SpyTrainer(Trainer):
    """Records how many extra (negative) documents every batch carried."""

    extras: list[int]

    def _collate(self, indices):
        batch = super()._collate(indices)
        self.extras = [*getattr(self, "extras", []), batch.num_extra]
        return batch


@pytest.mark.parametrize("sampler", list(SAMPLER_OPTIONS))
def test_every_sampler_trains_evaluates_and_saves(tmp_path, train_pairs, eval_pairs, tiny_model_dir, sampler):
    config = _config(
        tmp_path,
        train_pairs,
        eval_pairs,
        tiny_model_dir,
        sampler=sampler,
        sampler_options=SAMPLER_OPTIONS[sampler],
    )
    trainer = _SpyTrainer(config)
    result = trainer.fit()
    run = tmp_path / "run"
    assert result.steps == 4
    assert set(result.metrics) >= {"ndcg@10", "mrr@10", "recall@1"}
    records = _records(run)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 and r["lr"] > 0 for r in records if "loss" in r)
    assert any(r.get("split") == eval_pairs.name for r in records)
    assert (run / "report.md").read_text().startswith("# hardbatch training run")
    assert (run / "curves.png").stat().st_size > 1000
    # The final model loads with plain sentence-transformers and differs from the start.
    start, final = _weights(tiny_model_dir), _weights(run / "final")
    assert any(not torch.equal(start[k], final[k]) for k in start)
    # B3++: h = 2 negatives per example, 2 × 8 extra document columns per batch.
    assert trainer.extras == ([2 * 8] * 4 if sampler == "b3" else [0] * 4)


def test_gradient_cache_matches_direct_training(tmp_path, train_pairs, tiny_model_nodropout_dir):
    finals = {}
    for name, chunk in (("direct", None), ("cached", 3)):
        config = _config(
            tmp_path / name,
            train_pairs,
            None,
            tiny_model_nodropout_dir,
            gradcache_chunk=chunk,
            symmetric=True,
        )
        finals[name] = _weights(train(config).final_model)
    for key, value in finals["direct"].items():
        torch.testing.assert_close(finals["cached"][key], value, atol=2e-6, rtol=1e-4)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, pairs_files, tiny_model_dir):
    """An uninterrupted 2-epoch run from files: the target of the resumption tests."""
    root = tmp_path_factory.mktemp("reference")
    config = _resume_config(root / "run", pairs_files, tiny_model_dir)
    torch.set_num_threads(1)
    train(config)
    return root / "run"


def _resume_config(output_dir, pairs_files, model, **overrides):
    settings = dict(
        data=str(pairs_files["train"]),
        eval_data=str(pairs_files["eval"]),
        output_dir=str(output_dir),
        model=str(model),
        sampler="random",
        batch_size=8,
        epochs=2,
        lr=1e-3,
        max_seq_length=32,
        log_every=1,
        save_every=3,
        eval_batch_size=16,
        seed=7,
        device="cpu",
    )
    settings.update(overrides)
    return TrainConfig(**settings)


class _Crash(RuntimeError):
    pass


def test_resume_after_a_crash_is_exact(tmp_path, reference_run, pairs_files, tiny_model_dir):
    def crash_at_step_7(trainer, state):
        if state.step == 7:  # last checkpoint: step 6, mid-epoch 1
            raise _Crash

    run = tmp_path / "run"
    with pytest.raises(_Crash):
        train(_resume_config(run, pairs_files, tiny_model_dir), callbacks=[crash_at_step_7])
    assert (run / "checkpoints" / "step-00000006").is_dir()
    assert not (run / "final").exists()
    # Starting again without --resume must not silently overwrite the interrupted run.
    with pytest.raises(ConfigError, match="--resume"):
        train(_resume_config(run, pairs_files, tiny_model_dir))
    with pytest.raises(ConfigError, match="batch_size"):
        train(_resume_config(run, pairs_files, tiny_model_dir, batch_size=4, resume=True))
    train(_resume_config(run, pairs_files, tiny_model_dir, resume=True))
    assert _records(run) == _records(reference_run)
    expected, got = _weights(reference_run / "final"), _weights(run / "final")
    assert all(torch.equal(expected[k], got[k]) for k in expected)


KILL_SCRIPT = """
import os, signal, sys, torch
torch.set_num_threads(1)
from hardbatch.train import TrainConfig, train

def kill_at_step_5(trainer, state):
    if state.step == 5:  # after the epoch-end checkpoint at step 4 and before the one at step 6
        os.kill(os.getpid(), signal.SIGKILL)

train(TrainConfig(**{config}), callbacks=[kill_at_step_5])
"""


def test_kill_9_then_cli_resume_is_exact(tmp_path, reference_run, pairs_files, tiny_model_dir, monkeypatch):
    import subprocess
    import sys

    run = tmp_path / "run"
    config = vars(_resume_config(run, pairs_files, tiny_model_dir))
    script = KILL_SCRIPT.format(config=repr(config))
    env = {**__import__("os").environ, "HARDBATCH_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    names = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert names == ["step-00000003", "step-00000004"]  # the newest two; step 6 was never reached

    from hardbatch.app.cli.main import run as cli_run

    argv = ["hardbatch", "train", str(pairs_files["train"]), "-o", str(run), "--model", str(tiny_model_dir)]
    argv += ["--eval-data", str(pairs_files["eval"]), "--batch-size", "8", "--epochs", "2", "--lr", "1e-3"]
    argv += ["--max-seq-length", "32", "--log-every", "1", "--save-every", "3", "--eval-batch-size", "16"]
    argv += ["--seed", "7", "--device", "cpu", "--resume"]
    monkeypatch.setattr(sys, "argv", argv)
    cli_run()  # returns normally on success (errors exit with status 2)
    assert _records(run) == _records(reference_run)
    expected, got = _weights(reference_run / "final"), _weights(run / "final")
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert len([p for p in (run / "checkpoints").iterdir() if p.name.startswith("step-")]) == 2


def test_bad_settings_are_config_errors(tmp_path, train_pairs):
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(data=train_pairs, output_dir=str(tmp_path), batch_size=0)
    with pytest.raises(ConfigError, match="unknown sampler 'fancy'"):
        TrainConfig(data=train_pairs, output_dir=str(tmp_path), sampler="fancy")
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(data=train_pairs, output_dir=str(tmp_path), precision="fp8")
    with pytest.raises(ConfigError, match="larger than the data"):
        train(
            TrainConfig(
                data=train_pairs,
                output_dir=str(tmp_path / "r"),
                model="default",
                batch_size=64,
                eval_data=None,
                device="cpu",
            )
        )
