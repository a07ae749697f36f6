"""Re-mining the B3 plan with the student (``remine_every``): when, from what, and resumable."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from properties import planted_embeddings

from hardbatch.errors import ConfigError
from hardbatch.mining import mine_b3
from hardbatch.samplers import B3BatchSampler

N, K, B = 203, 4, 8
TEACHER = planted_embeddings(num_topics=7, per_topic=29, seed=1)[:2]
SOURCES = np.array(["alpha"] * 90 + ["beta"] * 113)
OPTIONS = {"batch_size": B, "cluster_size": K, "skip": 2, "window": 12, "device": "cpu", "seed": 3}
PLAN = mine_b3(*TEACHER, **OPTIONS)
SOURCE_PLAN = mine_b3(*TEACHER, sources=SOURCES, **OPTIONS)


def _student(epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """What a student "knows" at the start of ``epoch``: a different topic structure per epoch."""
    return planted_embeddings(num_topics=7, per_topic=29, seed=100 + epoch)[:2]


class Recorder:
    """An ``embed_fn`` that records the epochs it was asked for."""

    def __init__(self, embed=_student):
        self.embed, self.calls = embed, []

    def __call__(self, epoch: int):
        self.calls.append(epoch)
        return self.embed(epoch)


def _reference_batches(sampler: B3BatchSampler, epoch: int, mined_at: int, **mine_kw) -> list[list[int]]:
    """Batches of ``epoch`` from a plan mined here with the student's embeddings of epoch ``mined_at``."""
    plan = mine_b3(*_student(mined_at), **OPTIONS, **mine_kw)
    return plan.batches(epoch, batch_size=B, drop_last=True, rng=sampler.rng(epoch))


def test_plan_changes_only_at_multiples_of_E_and_batches_come_from_the_student_plan():
    embed = Recorder()
    sampler = B3BatchSampler(num_examples=N, batch_size=B, plan=PLAN, remine_every=2, embed_fn=embed)
    static = B3BatchSampler(num_examples=N, batch_size=B, plan=PLAN)
    seen = [list(sampler) for _ in range(5)]
    assert embed.calls == [2, 4]  # re-embedded at the start of epochs E and 2E only
    assert seen[:2] == [static.batches(0), static.batches(1)]  # before epoch E: the original plan
    assert sampler.remine_count == 2 and sampler.get_config_dict()["remines"] == 2
    for epoch, mined_at in ((2, 2), (3, 2), (4, 4)):
        assert seen[epoch] == _reference_batches(sampler, epoch, mined_at)
        assert seen[epoch] != static.batches(epoch)
    assert sampler.plan.fingerprint != PLAN.fingerprint
    assert sampler.base_plan is PLAN and sampler.state_dict()["plan_fingerprint"] == PLAN.fingerprint


def test_remine_keeps_the_mining_options_per_source():
    sampler = B3BatchSampler(
        num_examples=N, batch_size=B, plan=SOURCE_PLAN, remine_every=1, embed_fn=Recorder()
    )
    list(sampler)
    batches = list(sampler)  # epoch 1, re-mined per source
    assert batches == _reference_batches(sampler, 1, 1, sources=SOURCES)
    assert all(np.unique(SOURCES[b]).size == 1 for b in batches)


def test_random_hn_draws_from_the_remined_windows():
    from hardbatch.samplers import RandomHardNegativeBatchSampler

    embed = Recorder()
    sampler = RandomHardNegativeBatchSampler(
        num_examples=N, batch_size=B, plan=PLAN, num_hard_negatives=2, remine_every=1, embed_fn=embed
    )
    list(sampler)
    batches = list(sampler)  # epoch 1: re-mined
    student_plan = mine_b3(*_student(1), **OPTIONS)
    assert embed.calls == [1]
    for batch in batches[:3]:
        expected = student_plan.per_query_negatives(batch, 2, epoch=1, seed=sampler.seed)
        assert sampler.hard_negatives(batch, epoch=1) == expected
        assert expected != PLAN.per_query_negatives(batch, 2, epoch=1, seed=sampler.seed)


def test_lazy_mining_remines_with_the_same_mine_options():
    options = {k: v for k, v in OPTIONS.items() if k != "batch_size"}
    sampler = B3BatchSampler(
        num_examples=N, batch_size=B, query_emb=TEACHER[0], positive_emb=TEACHER[1], mine_options=options,
        seed=3, remine_every=1, embed_fn=Recorder(),
    )  # fmt: skip
    assert list(sampler) == PLAN.batches(0, batch_size=B, drop_last=True, rng=sampler.rng(0))
    assert list(sampler) == _reference_batches(sampler, 1, 1)


@pytest.mark.parametrize("stop_at", [3, 0])
def test_resume_after_a_remine_gives_the_same_batches(tmp_path, stop_at):
    def make(embed):
        return B3BatchSampler(
            num_examples=N, batch_size=B, plan=PLAN, remine_every=2, embed_fn=embed, num_hard_negatives=1
        )

    run = make(Recorder())
    for _ in range(3):
        list(run)  # epochs 0, 1, 2 (re-mined at 2)
    if stop_at:
        iterator = iter(run)  # epoch 3, same plan as epoch 2
        for _ in range(stop_at):
            next(iterator)
    path = tmp_path / "state.pt"
    torch.save(run.state_dict(), path)
    expected = list(iterator) if stop_at else list(run)
    expected_negatives = [run.hard_negatives(b, epoch=3) for b in expected]
    student_plan = mine_b3(*_student(2), **OPTIONS)  # B3++ negatives come from the re-mined windows
    assert expected_negatives[0] == student_plan.hard_negatives(expected[0], B, epoch=3, seed=run.seed)

    # The resumed process's student has other weights: re-embedding now would give another plan.
    embed = Recorder(lambda epoch: _student(epoch + 50))
    resumed = make(embed)
    resumed.set_epoch(3)
    resumed.load_state_dict(torch.load(path, weights_only=True))
    assert list(resumed) == expected and embed.calls == []
    assert [resumed.hard_negatives(b, epoch=3) for b in expected] == expected_negatives
    assert resumed.remine_count == 1
    list(resumed)  # epoch 4: due, mined with the resumed student
    assert embed.calls == [4]


def test_remine_errors():
    with pytest.raises(ConfigError, match="remine_every must be"):
        B3BatchSampler(num_examples=N, batch_size=B, plan=PLAN, remine_every=0, embed_fn=_student)
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="remine_every must be"):
            B3BatchSampler(num_examples=N, batch_size=B, plan=PLAN, remine_every=bad, embed_fn=_student)
    with pytest.raises(ConfigError, match="needs embed_fn"):
        B3BatchSampler(num_examples=N, batch_size=B, plan=PLAN, remine_every=1)
    with pytest.raises(ConfigError, match="only with remine_every"):
        B3BatchSampler(num_examples=N, batch_size=B, plan=PLAN, embed_fn=_student)
    wrong_rows = B3BatchSampler(
        num_examples=N, batch_size=B, plan=PLAN, remine_every=1, embed_fn=lambda e: (TEACHER[0][:10],) * 2
    )
    list(wrong_rows)
    with pytest.raises(ConfigError, match="embed_fn returned 10"):
        list(wrong_rows)
    static = B3BatchSampler(num_examples=N, batch_size=B, plan=PLAN)
    remined = B3BatchSampler(num_examples=N, batch_size=B, plan=PLAN, remine_every=1, embed_fn=_student)
    list(remined), list(remined)
    with pytest.raises(ConfigError, match="re-mined its plan"):
        static.load_state_dict(remined.state_dict())


def test_remine_needs_a_model_and_a_plan_sampler():
    from hardbatch.samplers import SamplerInputs, build_sampler
    from hardbatch.train import TrainConfig
    from hardbatch.train.config import check_sampler_options

    inputs = SamplerInputs(num_examples=N, plan=PLAN)
    with pytest.raises(ConfigError, match="model being trained"):
        build_sampler("b3", inputs, B, remine_every=1)
    with pytest.raises(ConfigError, match="remine_every: not an option of sampler 'random'"):
        check_sampler_options("random", {"remine_every": 1})
    with pytest.raises(ConfigError, match="--remine-every re-mines a batch plan"):
        TrainConfig(data="x", output_dir="y", sampler="gcbs", remine_every=1)
    with pytest.raises(ConfigError, match="remine_every must be a positive integer"):
        TrainConfig(data="x", output_dir="y", sampler="b3", remine_every=0)


def test_a_plan_mined_with_positive_texts_re_mines_with_the_datasets_texts():
    # Regression: the sampler read a `dataset` attribute it never stored (AttributeError at the re-mine).
    from hardbatch.data import PairDataset

    texts = [f"doc {i % 150}" for i in range(N)]  # some exact duplicates, filtered from the windows
    data = PairDataset([f"q {i}" for i in range(N)], texts)
    plan = mine_b3(*TEACHER, positive_texts=texts, **OPTIONS)
    assert plan.params["filter_same_text"]
    sampler = B3BatchSampler(data, batch_size=B, plan=plan, remine_every=1, embed_fn=Recorder())
    list(sampler)
    batches = list(sampler)  # epoch 1: re-mined with the same duplicate filter
    assert batches == _reference_batches(sampler, 1, 1, positive_texts=texts)
    assert sampler.remine_count == 1
    without = B3BatchSampler(num_examples=N, batch_size=B, plan=plan, remine_every=1, embed_fn=Recorder())
    list(without)
    with pytest.raises(ConfigError, match="needs the training dataset"):
        list(without)


def test_a_plan_mined_with_key_blocks_re_mines_with_them():
    blocked_plan = mine_b3(*TEACHER, key_block_size=37, precision="fp32", **OPTIONS)
    assert blocked_plan.params["key_block_size"] == 37
    np.testing.assert_array_equal(
        blocked_plan.clusters, mine_b3(*TEACHER, precision="fp32", **OPTIONS).clusters
    )
    sampler = B3BatchSampler(
        num_examples=N, batch_size=B, plan=blocked_plan, remine_every=1, embed_fn=Recorder()
    )
    list(sampler)
    batches = list(sampler)  # epoch 1: re-mined, with the plan's key blocks
    assert sampler.plan.stats["knn_info"]["key_block_size"] == 37  # dropped: no key blocks recorded
    assert batches == _reference_batches(sampler, 1, 1, precision="fp32")  # the unblocked plan's batches


def test_a_plan_whose_budget_cannot_fit_fails_at_construction_when_it_will_be_re_mined():
    from hardbatch.mining import BatchPlan

    bad = BatchPlan(PLAN.clusters, PLAN.remainder, N, {**PLAN.params, "memory_budget": "1KiB"})
    B3BatchSampler(num_examples=N, batch_size=B, plan=bad)  # static: nothing will be mined
    with pytest.raises(ConfigError, match="too small for the exact kNN"):
        B3BatchSampler(num_examples=N, batch_size=B, plan=bad, remine_every=1, embed_fn=Recorder())


def test_mine_options_with_a_plan_set_how_its_re_mines_run_and_nothing_else():
    blocked_plan = mine_b3(*TEACHER, key_block_size=37, precision="fp32", **OPTIONS)
    # A budget replaces the plan's block size as a pair (the two together would be a ConfigError).
    sampler = B3BatchSampler(
        num_examples=N, batch_size=B, plan=blocked_plan, remine_every=1, embed_fn=Recorder(),
        mine_options={"memory_budget": "16MiB"},
    )  # fmt: skip
    options = sampler.remine_options()
    assert options["memory_budget"] == "16MiB" and "key_block_size" not in options
    list(sampler)
    batches = list(sampler)  # epoch 1: re-mined under the budget, same plan as unblocked
    assert sampler.plan.stats["knn_info"]["memory_budget"] == 16 << 20
    assert batches == _reference_batches(sampler, 1, 1, precision="fp32")
    # Options that would change the plan cannot apply to a given one: an error, not silently ignored.
    with pytest.raises(ConfigError, match=r"mine_options \['skip'\] cannot apply to a given plan"):
        B3BatchSampler(num_examples=N, batch_size=B, plan=PLAN, mine_options={"skip": 5})
    with pytest.raises(ConfigError, match="too small for the exact kNN"):
        B3BatchSampler(
            num_examples=N, batch_size=B, plan=PLAN, remine_every=1, embed_fn=Recorder(),
            mine_options={"memory_budget": "1KiB"},
        )  # fmt: skip
