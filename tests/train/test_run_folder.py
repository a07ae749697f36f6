"""The run folder is never lost or shared: foreign files survive, finished runs stay finished, one run at a time."""

from __future__ import annotations

import json

import pytest
import torch

from hardbatch.errors import ConfigError, StaleCacheError, TrainingDivergedError
from hardbatch.train import TrainConfig, Trainer, train
from hardbatch.train.run_dir import MARKER_FILE, RunDirLock


def _config(run, data, model, **overrides):
    settings = dict(
        data=data,
        eval_data=None,
        output_dir=str(run),
        model=str(model),
        batch_size=8,
        epochs=1,
        lr=1e-3,
        max_seq_length=32,
        log_every=1,
        device="cpu",
        write_report=False,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def test_a_foreign_folder_needs_overwrite_and_keeps_other_files(tmp_path, train_pairs, tiny_model_dir):
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "w.bin").write_text("x")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"not empty \(final, notes\.txt\).*--overwrite"):
        train(_config(run, train_pairs, tiny_model_dir))
    with pytest.raises(ConfigError, match="not created by `hardbatch train`"):
        train(_config(run, train_pairs, tiny_model_dir, resume=True))
    assert (run / "final" / "w.bin").read_text() == "x"
    train(_config(run, train_pairs, tiny_model_dir, overwrite=True))
    assert (run / "notes.txt").read_text() == "mine"  # --overwrite replaces only hardbatch's outputs
    assert (run / MARKER_FILE).is_file() and (run / "final" / "config.json").is_file()


def test_resume_of_a_finished_run_is_nothing_to_do(tmp_path, train_pairs, tiny_model_dir):
    run = tmp_path / "run"
    first = train(_config(run, train_pairs, tiny_model_dir))
    weights = (run / "final" / "model.safetensors").read_bytes()
    log = (run / "metrics.jsonl").read_text()
    again = train(_config(run, train_pairs, tiny_model_dir, resume=True))
    assert again.steps == first.steps == 4
    assert (run / "final" / "model.safetensors").read_bytes() == weights
    assert (run / "metrics.jsonl").read_text() == log
    with pytest.raises(ConfigError, match=r"finished run.*lr: 0\.001 -> 0\.002.*--overwrite"):
        train(_config(run, train_pairs, tiny_model_dir, resume=True, lr=2e-3))
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(_config(run, train_pairs, tiny_model_dir))
    assert (run / "metrics.jsonl").read_text() == log


def test_a_second_run_on_a_locked_folder_fails_at_once(tmp_path, train_pairs, tiny_model_dir):
    run = tmp_path / "run"
    # Another process's run (flock conflicts across open file descriptions, even in one process).
    busy = pytest.raises(ConfigError, match=r"in use by another hardbatch run \(pid \d+")
    with RunDirLock(run), busy:
        train(_config(run, train_pairs, tiny_model_dir))
    assert not (run / "metrics.jsonl").exists()
    train(_config(run, train_pairs, tiny_model_dir))  # released: the folder is usable again


def test_the_lock_is_held_for_the_whole_run_and_released_after(tmp_path, train_pairs, tiny_model_dir):
    seen = []

    def probe(trainer, state):
        try:
            RunDirLock(trainer.output_dir).acquire().release()
            seen.append("free")
        except ConfigError:
            seen.append("locked")

    run = tmp_path / "run"
    train(_config(run, train_pairs, tiny_model_dir), callbacks=[probe])
    assert seen == ["locked"] * 4
    RunDirLock(run).acquire().release()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"weight_decay": 0.5}, "weight_decay: 0.01 -> 0.5"),
        ({"teacher": "other-teacher"}, "teacher: None -> 'other-teacher'"),
        ({"sampler_options": {"drop_last": False}}, "sampler_options: {} -> {'drop_last': False}"),
        ({"num_negatives": 0}, "num_negatives"),
        ({"eval_data": "EVAL"}, "evaluation data: fingerprint"),
    ],
)
def test_resume_refuses_every_setting_that_changes_the_result(
    tmp_path, train_pairs, eval_pairs, tiny_model_dir, change, message
):
    class Stop(RuntimeError):
        pass

    def stop_at_3(trainer, state):
        if state.step == 3:
            raise Stop

    run = tmp_path / "run"
    with pytest.raises(Stop):
        train(_config(run, train_pairs, tiny_model_dir, save_every=2), callbacks=[stop_at_3])
    if change.get("eval_data") == "EVAL":
        change = {"eval_data": eval_pairs}
    with pytest.raises(ConfigError, match="cannot continue with changed settings") as error:
        train(_config(run, train_pairs, tiny_model_dir, save_every=2, resume=True, **change))
    assert message in str(error.value)


def _poison_gradient_at(step_to_poison):
    """A callback that makes the gradient of step ``step_to_poison`` NaN (a diverging step)."""

    def callback(trainer, state):
        if state.step == step_to_poison - 1:
            param = next(trainer.model.parameters())
            handle = []

            def hook(grad):
                handle[0].remove()
                return grad * float("nan")

            handle.append(param.register_hook(hook))

    return callback


def test_a_non_finite_gradient_stops_before_anything_is_saved(tmp_path, train_pairs, tiny_model_dir):
    run = tmp_path / "run"
    with pytest.raises(
        TrainingDivergedError, match=r"step 3: non-finite.*step-00000002.*--on-nonfinite skip"
    ):
        train(_config(run, train_pairs, tiny_model_dir, save_every=2), callbacks=[_poison_gradient_at(3)])
    assert not (run / "final").exists() and not (run / "result.json").exists()
    from hardbatch.embed.models import load_model

    saved = load_model(run / "checkpoints" / "step-00000002" / "model", device="cpu")
    assert all(torch.isfinite(p).all() for p in saved.parameters())


def test_on_nonfinite_skip_drops_the_update_and_counts_it(tmp_path, train_pairs, tiny_model_dir):
    run = tmp_path / "run"
    config = _config(run, train_pairs, tiny_model_dir, on_nonfinite="skip")
    result = train(config, callbacks=[_poison_gradient_at(2)])
    assert result.steps == 4 and result.summary["skipped_steps"] == 1
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 3, 4]  # the skipped step logs nothing, never a NaN
    assert all(r["loss"] == r["loss"] for r in records)
    from hardbatch.embed.models import load_model

    assert all(torch.isfinite(p).all() for p in load_model(run / "final", device="cpu").parameters())


def test_a_huge_learning_rate_never_ends_as_a_success(tmp_path, train_pairs, tiny_model_dir):
    run = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match=r"non-finite|not finite"):
        train(_config(run, train_pairs, tiny_model_dir, lr=1e30, max_grad_norm=None, epochs=3))
    assert not (run / "final").exists()


def test_a_plan_mined_on_other_data_is_refused(tmp_path, train_pairs, tiny_model_dir):
    import numpy as np

    from hardbatch.data import PairDataset
    from hardbatch.mining import mine_b3

    other = PairDataset(
        [q + " (other)" for q in train_pairs.queries], list(train_pairs.positives), name="other"
    )
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((len(other), 8)).astype(np.float32)
    plan = mine_b3(emb, emb, batch_size=8, cluster_size=4, skip=0, window=4, device="cpu",
                   dataset_hash=other.fingerprint, show_progress=False)  # fmt: skip
    path = plan.save(tmp_path / "plan.parquet")
    config = _config(tmp_path / "run", train_pairs, tiny_model_dir, sampler="b3", plan=str(path))
    with pytest.raises(StaleCacheError, match=r"plan .*plan\.parquet is stale: its dataset hash"):
        Trainer(config).fit()


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, train_pairs, tiny_model_dir):
    class Stop(RuntimeError):
        pass

    def stop_at_3(trainer, state):
        if state.step == 3:
            raise Stop

    run = tmp_path / "run"
    reference = train(_config(tmp_path / "reference", train_pairs, tiny_model_dir, save_every=1))
    with pytest.raises(Stop):
        train(_config(run, train_pairs, tiny_model_dir, save_every=1), callbacks=[stop_at_3])
    state = run / "checkpoints" / "step-00000003" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])  # the newest checkpoint is torn
    resumed = []
    result = train(
        _config(run, train_pairs, tiny_model_dir, save_every=1, resume=True),
        callbacks=[lambda trainer, st: resumed.append(st.step)],
    )
    assert resumed[0] == 3 and result.steps == 4  # resumed from step 2, so step 3 was trained again
    assert (run / "final" / "model.safetensors").read_bytes() == (
        reference.final_model / "model.safetensors"
    ).read_bytes()


def test_sampler_options_are_described_by_content_for_the_resume_check():
    import numpy as np

    from hardbatch.train.config import describe

    a, b = np.ones((4, 2), np.float32), np.zeros((4, 2), np.float32)
    assert describe({"query_emb": a}) == describe({"query_emb": a.copy()})
    assert describe({"query_emb": a}) != describe({"query_emb": b})  # same shape, other teacher
    assert describe({"mine_options": {"window": 8}}) != describe({"mine_options": {"window": 30}})


def test_a_resumed_auto_precision_run_keeps_the_precision_it_started_in(
    tmp_path, train_pairs, tiny_model_dir, monkeypatch
):
    """precision="auto" on a machine of another kind (fast bf16 or not) must not switch a run mid-way."""
    import hardbatch.device

    class Stop(RuntimeError):
        pass

    seen: list[torch.dtype | None] = []

    def record_then_stop_at_3(trainer, state):
        seen.append(trainer.runner.autocast_dtype)
        if state.step == 3 and not trainer.config.resume:
            raise Stop

    run = tmp_path / "run"
    monkeypatch.setattr(hardbatch.device, "fast_bf16_matmul", lambda device: False)
    with pytest.raises(Stop):
        train(_config(run, train_pairs, tiny_model_dir, save_every=2), callbacks=[record_then_stop_at_3])
    assert seen == [None] * 3  # fp32 where bf16 is slow
    seen.clear()
    monkeypatch.setattr(hardbatch.device, "fast_bf16_matmul", lambda device: True)  # another kind of machine
    with pytest.warns(UserWarning, match="trained in fp32 and continues in fp32.*picks bf16"):
        train(_config(run, train_pairs, tiny_model_dir, save_every=2, resume=True),
              callbacks=[record_then_stop_at_3])  # fmt: skip
    assert seen == [None] * 2  # steps 3 and 4, still fp32
    assert json.loads((run / "result.json").read_text())["training_precision"] == "fp32"
    fresh = train(_config(tmp_path / "fresh", train_pairs, tiny_model_dir, max_steps=1),
                  callbacks=[record_then_stop_at_3])  # fmt: skip
    assert fresh.steps == 1 and seen[-1] == torch.bfloat16  # a new run on this machine picks bf16
