"""Sampler-specific behaviour beyond the shared property suite: the grouping each sampler promises."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from properties import planted_embeddings

from hardbatch.errors import ConfigError
from hardbatch.samplers import (
    SAMPLERS,
    NoDuplicatesBatchSampler,
    RandomBatchSampler,
    SourceBatchSampler,
    TopicBatchSampler,
    build_sampler,
)
from hardbatch.samplers.topic import kmeans_labels


def test_nodup_never_repeats_a_text_and_defers_instead_of_dropping():
    rng = np.random.default_rng(0)
    # Heavy duplication: 100 distinct queries, 60 positives, 25 negatives (which also occur as queries).
    rows = [
        {"query": f"q{rng.integers(100)}", "positive": f"p{rng.integers(60)}", "negatives": [f"q{i % 25}"]}
        for i in range(300)
    ]
    sampler = NoDuplicatesBatchSampler(rows, batch_size=6, drop_last=False, seed=1)
    for epoch in range(3):
        batches = sampler.batches(epoch)
        for batch in batches:
            texts = [t for i in batch for t in {rows[i]["query"], rows[i]["positive"], *rows[i]["negatives"]}]
            assert len(texts) == len(set(texts))
        seen = sum(len(b) for b in batches)
        assert seen > 270  # conflicting rows are deferred to later batches, not dropped
        assert len(sampler) == len(sampler.batches(sampler.epoch))
    assert sampler.num_rows_with_shared_text == 300


def test_nodup_reads_hf_datasets_and_skips_label_columns():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict(
        {"anchor": ["a", "b", "c", "d"], "positive": ["x", "y", "z", "w"], "label": [1, 1, 1, 1]}
    )
    sampler = NoDuplicatesBatchSampler(ds, batch_size=2, valid_label_columns=["label"], drop_last=True)
    assert sorted(i for b in sampler.batches(0) for i in b) == [0, 1, 2, 3]  # equal labels are no conflict
    assert sampler.num_rows_with_shared_text == 0


def test_topic_batches_come_from_one_kmeans_cluster():
    query, _, topic = planted_embeddings(num_topics=6, per_topic=80, dim=16, noise=0.2, seed=2)
    for backend in ("faiss", "sklearn"):
        labels, _ = kmeans_labels(query, 6, seed=0, backend=backend)
        # Planted topics are recovered (up to renaming).
        assert all(len(set(labels[topic == t])) == 1 for t in range(6)), backend
    sampler = TopicBatchSampler(
        num_examples=480, batch_size=16, query_emb=query, n_clusters=6, leftover="drop"
    )
    for batch in sampler.batches(0):
        assert len(set(topic[batch])) == 1
    # Under DDP the whole global batch (world_size consecutive batches) shares a topic.
    ddp = TopicBatchSampler(num_examples=480, batch_size=16, query_emb=query, n_clusters=6, world_size=2)
    batches = ddp.batches(0)
    pure = [len(set(topic[batches[i] + batches[i + 1]])) == 1 for i in range(0, len(batches), 2)]
    assert sum(pure) >= 2 * 6  # each topic fills 2 global batches of 32; only the 3 leftover units mix
    with pytest.raises(ConfigError, match="exactly one"):
        TopicBatchSampler(num_examples=480, batch_size=16)


def test_source_batches_are_single_source_per_global_batch():
    sources = np.array(["a"] * 50 + ["b"] * 37 + ["c"] * 13)
    sampler = SourceBatchSampler(num_examples=100, batch_size=4, sources=sources, world_size=2, seed=3)
    batches = sampler.batches(0)
    for i in range(0, len(batches), 2):
        assert len(set(sources[batches[i] + batches[i + 1]])) == 1
    assert sampler.source_counts() == {"a": 50, "b": 37, "c": 13}
    assert len(batches) == len(sampler) == 2 * (50 // 8 + 37 // 8 + 13 // 8)
    with pytest.raises(ConfigError, match="no source has"):
        SourceBatchSampler(num_examples=6, batch_size=4, sources=list("aabbcc"))
    with pytest.raises(ConfigError, match="needs sources"):
        SourceBatchSampler([{"query": "q"}] * 8, batch_size=4)


def test_registry_and_build_sampler():
    assert {"random", "nodup", "topic", "source", "gcbs", "b3"} <= set(SAMPLERS)
    assert SAMPLERS["random"] is RandomBatchSampler
    sampler = build_sampler("source", None, 2, num_examples=4, sources=["x"] * 4, seed=1)
    assert isinstance(sampler, SourceBatchSampler)
    with pytest.raises(ConfigError, match="unknown sampler"):
        build_sampler("nope", None, 2)
    # A misspelt option is a user error naming it and the accepted ones (was a bare TypeError).
    with pytest.raises(
        ConfigError, match=r"target_degre: not an option of sampler 'gcbs'; it accepts .*target_degree"
    ):
        build_sampler("gcbs", None, 2, num_examples=4, target_degre=3)
    b3 = SAMPLERS["b3"]  # resolved lazily
    assert b3.__name__ == "B3BatchSampler"


def test_sentence_transformers_trainer_builds_our_sampler(tiny_model, tmp_path):
    datasets = pytest.importorskip("datasets")
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    train = datasets.Dataset.from_dict(
        {"anchor": [f"query {i}" for i in range(40)], "positive": [f"doc {i}" for i in range(40)]}
    )
    labels = np.arange(40) % 4
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=5,
        batch_sampler=functools.partial(TopicBatchSampler, labels=labels, leftover="drop"),
        report_to=[],
    )
    trainer = SentenceTransformerTrainer(
        model=tiny_model, args=args, train_dataset=train, loss=MultipleNegativesRankingLoss(tiny_model)
    )
    loader = trainer.get_train_dataloader()
    sampler = loader.batch_sampler
    sampler = getattr(sampler, "batch_sampler", sampler)  # accelerate may wrap it
    assert isinstance(sampler, TopicBatchSampler)
    batches = sampler.batches(0)
    assert len(batches) == 8 and all(len(set(labels[b])) == 1 for b in batches)
