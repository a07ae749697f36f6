from __future__ import annotations

import numpy as np
import pytest
from properties import check_sampler_properties, planted_embeddings

from hardbatch.errors import ConfigError, StaleCacheError
from hardbatch.mining import BatchPlan, mine_b3
from hardbatch.samplers import B3BatchSampler
from key_block_cases import bad_key_blocks

N, K, B = 203, 4, 8
QUERY, POSITIVE, TOPIC = planted_embeddings(num_topics=7, per_topic=29, seed=1)
SOURCES = np.array(["alpha"] * 90 + ["beta"] * 113)
PLAN = mine_b3(QUERY, POSITIVE, batch_size=B, cluster_size=K, skip=2, window=12, device="cpu")
SOURCE_PLAN = mine_b3(
    QUERY, POSITIVE, batch_size=B, cluster_size=K, skip=2, window=12, sources=SOURCES, device="cpu"
)


def _max_uncovered(plan: BatchPlan):
    def bound(sampler: B3BatchSampler) -> int:
        if not sampler.full_batches_only:
            return 0
        groups = len(plan.source_names) if plan.has_sources and sampler.same_source is not False else 1
        if sampler.splits_global:
            # N mod K remainder + clusters that do not fill a global batch (per source); no world-size cut.
            per_global = sampler.global_size // plan.cluster_size
            return plan.remainder.size + groups * (per_global - 1) * plan.cluster_size
        per_batch = sampler.batch_size // plan.cluster_size
        # N mod K remainder + clusters that do not fill a batch (per source) + the world-size cut.
        leftover_clusters = groups * (per_batch - 1) * plan.cluster_size
        return plan.remainder.size + leftover_clusters + (sampler.world_size - 1) * sampler.batch_size

    return bound


@pytest.mark.parametrize(("plan", "same_source"), [(PLAN, None), (SOURCE_PLAN, None), (SOURCE_PLAN, False)])
def test_property_suite(plan, same_source):
    def make(**kw):
        return B3BatchSampler(num_examples=N, batch_size=B, plan=plan, same_source=same_source, **kw)

    check_sampler_properties(make, max_uncovered=_max_uncovered(plan), max_examples=12)


def test_batches_are_whole_clusters_and_hard():
    sampler = B3BatchSampler(num_examples=N, batch_size=16, plan=PLAN, seed=5)
    labels = PLAN.labels()
    for batch in sampler:
        assert len(batch) == 16 and np.bincount(labels[batch]).max() == K
        assert sum(np.bincount(labels[batch]) == K) == 4
    same_topic = np.mean([np.bincount(TOPIC[c]).max() / K for c in PLAN.clusters])
    assert same_topic > 0.9  # clusters come from one planted topic


def test_per_source_batches_stay_in_one_source():
    sampler = B3BatchSampler(num_examples=N, batch_size=B, plan=SOURCE_PLAN)
    assert all(np.unique(SOURCES[b]).size == 1 for b in sampler)
    mixed = B3BatchSampler(num_examples=N, batch_size=B, plan=SOURCE_PLAN, same_source=False)
    assert any(np.unique(SOURCES[b]).size == 2 for epoch in range(3) for b in mixed.batches(epoch))


def test_lazy_mining_equals_explicit_plan():
    options = {"cluster_size": K, "skip": 2, "window": 12, "device": "cpu"}
    lazy = B3BatchSampler(
        num_examples=N, batch_size=B, seed=0, query_emb=QUERY, positive_emb=POSITIVE, mine_options=options
    )
    assert lazy.get_config_dict()["plan"] == "lazy"
    assert lazy.plan.fingerprint == PLAN.fingerprint
    assert list(lazy) == B3BatchSampler(num_examples=N, batch_size=B, seed=0, plan=PLAN).batches(0)


def test_plan_file_and_factory_with_sentence_transformers_signature(tmp_path):
    path = PLAN.save(tmp_path / "plan.parquet")
    factory = B3BatchSampler.factory(plan=path)
    dataset = list(range(N))
    sampler = factory(dataset, batch_size=B, drop_last=True, valid_label_columns=None, generator=None, seed=3)
    assert isinstance(sampler, B3BatchSampler) and sampler.seed == 3
    assert list(sampler) == B3BatchSampler(dataset, batch_size=B, seed=3, plan=PLAN).batches(0)
    with pytest.raises(StaleCacheError, match="mined for 203 examples"):
        factory(
            list(range(N + 1)), batch_size=B, drop_last=True, valid_label_columns=None, generator=None, seed=0
        )


def test_sentence_transformers_trainer_uses_the_sampler(tiny_model, tmp_path):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    data = Dataset.from_dict(
        {"anchor": [f"q {i}" for i in range(N)], "positive": [f"p {i}" for i in range(N)]}
    )
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=B,
        batch_sampler=B3BatchSampler.factory(plan=PLAN),
        report_to="none",
        use_cpu=True,
        seed=11,
    )
    trainer = SentenceTransformerTrainer(
        model=tiny_model, args=args, train_dataset=data, loss=MultipleNegativesRankingLoss(tiny_model)
    )
    loader = trainer.get_train_dataloader()
    sampler = loader.batch_sampler
    sampler = getattr(sampler, "batch_sampler", sampler)
    assert isinstance(sampler, B3BatchSampler) and len(loader) == len(sampler)
    assert sampler.drop_last == args.dataloader_drop_last  # False by default: the mixed tail is kept
    assert sampler.batches(0) == PLAN.batches(
        0, batch_size=B, drop_last=sampler.drop_last, rng=sampler.rng(0)
    )


def test_hard_negatives_through_the_sampler():
    sampler = B3BatchSampler(num_examples=N, batch_size=B, plan=PLAN, num_hard_negatives=3)
    batch = sampler.batches(0)[0]
    negatives = sampler.hard_negatives(batch)
    # h per example (the paper's count), not h for the whole batch.
    assert len(negatives) == 3 * B and len(set(negatives)) == 3 * B
    assert not set(negatives) & set(PLAN.excluded_negatives(batch).tolist())
    assert negatives == sampler.hard_negatives(list(reversed(batch)))
    # The sampler's epoch reaches the draw: the same batch gets other negatives in another epoch.
    assert sampler.hard_negatives(batch, epoch=1) != negatives
    sampler.set_epoch(1)
    assert sampler.hard_negatives(batch) == sampler.hard_negatives(batch, epoch=1)
    with pytest.raises(ConfigError, match="num_hard_negatives=0"):
        B3BatchSampler(num_examples=N, batch_size=B, plan=PLAN).hard_negatives(batch)


def test_global_batches_are_the_single_process_batches_split_over_ranks():
    world = 3
    single = B3BatchSampler(num_examples=N, batch_size=B * world, plan=SOURCE_PLAN, num_hard_negatives=2)
    split = B3BatchSampler(
        num_examples=N, batch_size=B, plan=SOURCE_PLAN, num_hard_negatives=2, world_size=world
    )
    for epoch in (0, 1):
        stream = split.batches(epoch)
        assert len(stream) == len(split) == world * len(single.batches(epoch))
        for g, whole in enumerate(single.batches(epoch)):
            slices = stream[g * world : (g + 1) * world]
            assert [i for part in slices for i in part] == whole  # rank r takes slice r
            assert np.unique(SOURCES[whole]).size == 1  # one source per global batch
            negatives = [split.hard_negatives(part, epoch=epoch) for part in slices]
            assert all(len(n) == 2 * B for n in negatives)
            assert [i for n in negatives for i in n] == single.hard_negatives(whole, epoch=epoch)
    independent = B3BatchSampler(
        num_examples=N, batch_size=B, plan=SOURCE_PLAN, world_size=world, global_batches=False
    )
    assert independent.batches(0) != split.batches(0)


def test_errors():
    with pytest.raises(ConfigError, match="multiple of the cluster size 4"):
        B3BatchSampler(num_examples=N, batch_size=6, plan=PLAN)
    with pytest.raises(ConfigError, match="larger than the data"):
        B3BatchSampler(num_examples=N, batch_size=256, plan=PLAN)
    with pytest.raises(ConfigError, match="needs a plan"):
        B3BatchSampler(num_examples=N, batch_size=B)
    with pytest.raises(ConfigError, match="rows but the dataset"):
        B3BatchSampler(num_examples=N, batch_size=B, query_emb=QUERY[:10], positive_emb=POSITIVE)
    with pytest.raises(StaleCacheError):
        B3BatchSampler(num_examples=N, batch_size=B, plan=PLAN, expected_hash="0" * 64)
    state = B3BatchSampler(num_examples=N, batch_size=B, plan=PLAN).state_dict()
    with pytest.raises(ConfigError, match="different batch plan"):
        B3BatchSampler(num_examples=N, batch_size=B, plan=SOURCE_PLAN).load_state_dict(state)


# ----------------------------------------------------------------- key blocks and memory budget
KB_QUERY, KB_POSITIVE, _ = planted_embeddings(num_topics=6, per_topic=50, dim=16, seed=9)
KB_SOURCES = np.where(np.arange(300) % 3 == 0, "a", "b")
KB_MINE = {"cluster_size": 5, "skip": 2, "window": 12, "device": "cpu", "precision": "fp32", "chunk_size": 64,
           "show_progress": False}  # fmt: skip


def _knn_infos(plan: BatchPlan) -> list[dict]:
    infos = plan.stats["knn_info"]
    return infos if isinstance(infos, list) else [infos]


@pytest.mark.parametrize("per_source", [False, True])
def test_lazy_mining_with_key_blocks_or_a_budget_gives_the_unblocked_batches(per_source):
    from hardbatch.graph.knn import knn_working_set

    mine = {**KB_MINE, **({"sources": KB_SOURCES} if per_source else {})}

    def make(**extra):
        return B3BatchSampler(num_examples=300, batch_size=10, seed=1, query_emb=KB_QUERY,
                              positive_emb=KB_POSITIVE, mine_options={**mine, **extra})  # fmt: skip

    whole, blocked = make(), make(key_block_size=37)
    # Blocks of 260 of 300 keys; the groups of 100 and 200 fit whole (no block below min(n, 256) keys).
    budget = make(memory_budget=knn_working_set(260, 16, 64, "fp32"))
    for epoch in (0, 1):
        assert blocked.batches(epoch) == whole.batches(epoch) == budget.batches(epoch)
    assert blocked.plan.fingerprint == whole.plan.fingerprint
    # The options reached mine_b3's kNN (dropped, no key blocks would be recorded).
    assert all(info["key_block_size"] == 37 and info["key_blocks"] > 1 for info in _knn_infos(blocked.plan))
    blocks = [(info["key_block_size"], info["key_blocks"]) for info in _knn_infos(budget.plan)]
    assert blocks == ([(100, 1), (200, 1)] if per_source else [(260, 2)])
    assert "key_blocks" not in _knn_infos(whole.plan)[0]
    assert blocked.plan.params["key_block_size"] == 37 and "key_block_size" not in whole.plan.params


def test_key_block_mine_options_through_the_registry():
    from hardbatch.samplers import SamplerInputs, build_sampler

    inputs = SamplerInputs(num_examples=300, teacher=(KB_QUERY, KB_POSITIVE))
    whole = build_sampler("b3", inputs, 10, mine_options=KB_MINE)
    # Values as JSON gives them (`--sampler-option 'mine_options={"memory_budget": "64MiB", ...}'`).
    auto = build_sampler("b3", inputs, 10, mine_options={**KB_MINE, "key_block_size": "auto",
                                                        "memory_budget": "64MiB"})  # fmt: skip
    assert auto.batches(0) == whole.batches(0)
    assert _knn_infos(auto.plan)[0]["memory_budget"] == 64 * 2**20


BAD_KEY_BLOCKS = bad_key_blocks("exact kNN", {"knn": "hnsw"})


@pytest.mark.parametrize("case", sorted(BAD_KEY_BLOCKS))
def test_bad_key_block_mine_options_fail_at_construction(case):
    from hardbatch.samplers import SamplerInputs, build_sampler

    bad, message = BAD_KEY_BLOCKS[case]
    with pytest.raises(ConfigError, match=message):
        B3BatchSampler(num_examples=300, batch_size=10, query_emb=KB_QUERY, positive_emb=KB_POSITIVE,
                       mine_options={**KB_MINE, **bad})  # fmt: skip
    inputs = SamplerInputs(num_examples=300, teacher=(KB_QUERY, KB_POSITIVE))
    with pytest.raises(ConfigError, match=message):
        build_sampler("b3", inputs, 10, mine_options={**KB_MINE, **bad})
