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
    # B3 mined lazily from teacher embeddings, with B3++ hard negatives (h per example).
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
    # B3++: h = 2 hard negatives per example, so 2 · |B| = 16 extra key columns per step.
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
            precision="fp32",  # equal to fp32 rounding on every machine ("auto" may autocast to bf16)
        )
        finals[name] = _weights(train(config).final_model)
    for key, value in finals["direct"].items():
        torch.testing.assert_close(finals["cached"][key], value, atol=2e-6, rtol=1e-4)


# The resumption tests cover every sampler whose epoch depends on more than (seed, epoch): GCBS re-mines
# with the model being trained (its interrupted epoch must come from the checkpoint, not be recomputed),
# B3 with B3++ negatives from a plan mined from teacher embeddings, topic from k-means on them.
RESUME_SAMPLERS = ("random", "gcbs", "b3", "topic")
_REFERENCE_RUNS: dict[str, object] = {}


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory, pairs_files, tiny_model_dir):
    """Uninterrupted 2-epoch runs from files (one per sampler, made on first use): the resumption targets."""

    def get(sampler):
        if sampler not in _REFERENCE_RUNS:
            root = tmp_path_factory.mktemp(f"reference-{sampler}")
            torch.set_num_threads(1)
            train(_resume_config(root / "run", pairs_files, tiny_model_dir, sampler=sampler))
            _REFERENCE_RUNS[sampler] = root / "run"
        return _REFERENCE_RUNS[sampler]

    yield get
    _REFERENCE_RUNS.clear()


def _resume_config(output_dir, pairs_files, model, sampler="random", **overrides):
    settings = dict(
        data=str(pairs_files["train"]),
        eval_data=str(pairs_files["eval"]),
        output_dir=str(output_dir),
        model=str(model),
        sampler=sampler,
        sampler_options=SAMPLER_OPTIONS[sampler],
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


def _assert_same_run(run, reference):
    assert _records(run) == _records(reference)
    expected, got = _weights(reference / "final"), _weights(run / "final")
    assert all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.parametrize("sampler", RESUME_SAMPLERS)
def test_resume_after_a_crash_is_exact(tmp_path, reference_runs, pairs_files, tiny_model_dir, sampler):
    def crash_at_step_7(trainer, state):
        if state.step == 7:  # last checkpoint: step 6, mid-epoch 1
            raise _Crash

    run = tmp_path / "run"
    with pytest.raises(_Crash):
        train(_resume_config(run, pairs_files, tiny_model_dir, sampler), callbacks=[crash_at_step_7])
    assert (run / "checkpoints" / "step-00000006").is_dir()
    assert not (run / "final").exists()
    # Starting again without --resume must not silently overwrite the interrupted run.
    with pytest.raises(ConfigError, match="--resume"):
        train(_resume_config(run, pairs_files, tiny_model_dir, sampler))
    with pytest.raises(ConfigError, match="batch_size"):
        train(_resume_config(run, pairs_files, tiny_model_dir, sampler, batch_size=4, resume=True))
    train(_resume_config(run, pairs_files, tiny_model_dir, sampler, resume=True))
    _assert_same_run(run, reference_runs(sampler))


KILL_SCRIPT = """
import os, signal, sys, torch
torch.set_num_threads(1)
from hardbatch.train import TrainConfig, train

def kill_at_step_7(trainer, state):
    if state.step == 7:  # after the checkpoint at step 6 (mid-epoch 1), before the end at step 8
        os.kill(os.getpid(), signal.SIGKILL)

train(TrainConfig(**{config}), callbacks=[kill_at_step_7])
"""


@pytest.mark.parametrize(
    "sampler", [s if s == "random" else pytest.param(s, marks=pytest.mark.slow) for s in RESUME_SAMPLERS]
)
def test_kill_9_then_resume_is_exact(
    tmp_path, reference_runs, pairs_files, tiny_model_dir, monkeypatch, sampler
):
    import subprocess
    import sys

    run = tmp_path / "run"
    config = vars(_resume_config(run, pairs_files, tiny_model_dir, sampler))
    script = KILL_SCRIPT.format(config=repr(config))
    env = {**__import__("os").environ, "HARDBATCH_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    names = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert names == ["step-00000004", "step-00000006"]  # the newest two; the end was never reached

    if sampler == "random":  # resume through the command line once
        from hardbatch.app.cli.main import run as cli_run

        argv = [
            "hardbatch",
            "train",
            str(pairs_files["train"]),
            "-o",
            str(run),
            "--model",
            str(tiny_model_dir),
        ]
        argv += [
            "--eval-data",
            str(pairs_files["eval"]),
            "--batch-size",
            "8",
            "--epochs",
            "2",
            "--lr",
            "1e-3",
        ]
        argv += ["--max-seq-length", "32", "--log-every", "1", "--save-every", "3", "--eval-batch-size", "16"]
        argv += ["--seed", "7", "--device", "cpu", "--resume"]
        monkeypatch.setattr(sys, "argv", argv)
        cli_run()  # returns normally on success (errors exit with status 2)
    else:
        train(_resume_config(run, pairs_files, tiny_model_dir, sampler, resume=True))
    _assert_same_run(run, reference_runs(sampler))
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


@pytest.mark.parametrize(
    ("precision", "fast", "expected"),
    [("auto", "0", None), ("auto", "1", torch.bfloat16), ("fp32", "1", None), ("bf16", "0", torch.bfloat16)],
)
def test_auto_precision_autocasts_where_bf16_matmul_is_fast(monkeypatch, precision, fast, expected):
    from types import SimpleNamespace

    from hardbatch.device import BF16_MATMUL_ENV
    from hardbatch.train.config import training_precision

    monkeypatch.setenv(BF16_MATMUL_ENV, fast)
    ctx = SimpleNamespace(device=torch.device("cpu"))
    trainer = SimpleNamespace(_precision=training_precision(precision, ctx.device))
    assert Trainer._autocast_dtype(trainer, ctx) is expected
