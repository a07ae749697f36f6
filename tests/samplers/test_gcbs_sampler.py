from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from properties import planted_embeddings

from hardbatch.errors import ConfigError, DataError, HardbatchError
from hardbatch.samplers import GCBSBatchSampler, model_embed_fn
from key_block_cases import bad_key_blocks

QUERY, POSITIVE, TOPIC = planted_embeddings(num_topics=6, per_topic=40, dim=16, noise=0.2, seed=4)


def test_fixed_teacher_batches_are_topical_and_only_order_changes():
    fixed = GCBSBatchSampler(
        num_examples=240, batch_size=40, query_emb=QUERY, positive_emb=POSITIVE, target_degree=20,
        shuffle_batches=False, random_offset=False, device="cpu",
    )  # fmt: skip
    for epoch in (0, 1):
        purity = np.mean([np.bincount(TOPIC[b]).max() / len(b) for b in fixed.batches(epoch)])
        assert purity > 0.9
    shuffled = GCBSBatchSampler(
        num_examples=240, batch_size=40, query_emb=QUERY, positive_emb=POSITIVE, target_degree=20,
        random_offset=False, device="cpu", seed=5,
    )  # fmt: skip
    a, b = shuffled.batches(0), shuffled.batches(1)
    assert sorted(i for x in a for i in x) == sorted(i for x in b for i in x) == list(range(240)) and a != b
    stats = shuffled.last_stats
    assert stats["epoch"] == 1 and stats["components"] >= 6 and "threshold_graph" in stats["seconds"]


def test_resume_uses_the_saved_order_even_when_the_model_moved():
    calls = []

    def embed_fn(epoch):
        calls.append(epoch)
        noise = np.random.default_rng(len(calls)).normal(scale=0.3, size=QUERY.shape)  # differs per call
        return QUERY + noise, POSITIVE + noise

    sampler = GCBSBatchSampler(
        num_examples=240, batch_size=16, embed_fn=embed_fn, target_degree=16, device="cpu"
    )
    iterator = iter(sampler)
    taken = [next(iterator) for _ in range(4)]
    state = json.loads(json.dumps(sampler.state_dict()))  # must survive JSON
    resumed = GCBSBatchSampler(
        num_examples=240, batch_size=16, embed_fn=embed_fn, target_degree=16, device="cpu"
    )
    resumed.load_state_dict(state)
    rest = list(resumed)
    flat = [i for b in taken + rest for i in b]
    assert sorted(flat) == list(range(240)) and len(rest) == len(sampler) - 4
    assert calls == [0]  # the resumed epoch was not recomputed


def test_model_embed_fn_with_a_real_model(tiny_model):
    pairs = SimpleNamespace(
        queries=[f"how to {verb} a list" for verb in ("sort", "copy", "reverse", "sum")] * 8,
        positives=[f"def {verb}(xs): pass" for verb in ("sort", "copy", "reverse", "sum")] * 8,
    )
    pairs.__len__ = None
    embed_fn = model_embed_fn(tiny_model, pairs, batch_size=16, device="cpu")
    q, p = embed_fn(0)
    assert q.shape == p.shape == (32, 32)
    tiny_model.train()
    sampler = GCBSBatchSampler(
        num_examples=32, batch_size=8, embed_fn=embed_fn, target_degree=4, device="cpu"
    )
    assert len(list(sampler)) == 4 and tiny_model.training  # training mode restored


def test_ranks_take_rank_zero_batches_when_a_group_exists(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        sampler = GCBSBatchSampler(
            num_examples=240,
            batch_size=16,
            query_emb=QUERY,
            positive_emb=POSITIVE,
            world_size=2,
            device="cpu",
        )
        batches = sampler.batches(0)
        assert len(batches) % 2 == 0 and all(len(b) == 16 for b in batches)
    finally:
        dist.destroy_process_group()


def test_errors():
    with pytest.raises(ConfigError, match="either embed_fn"):
        GCBSBatchSampler(num_examples=240, batch_size=8, query_emb=QUERY)
    with pytest.raises(ConfigError, match="not both"):
        GCBSBatchSampler(num_examples=240, batch_size=8, query_emb=QUERY, positive_emb=POSITIVE, quantile=0.9,
                         target_degree=3)  # fmt: skip
    bad = GCBSBatchSampler(num_examples=240, batch_size=8, embed_fn=lambda e: (QUERY[:10], POSITIVE[:10]))
    with pytest.raises(HardbatchError, match="embed_fn returned 10"):
        bad.batches(0)
    with pytest.raises(DataError, match="row 3"):
        nan = QUERY.copy()
        nan[3] = np.nan
        GCBSBatchSampler(
            num_examples=240, batch_size=8, query_emb=torch.from_numpy(nan), positive_emb=POSITIVE
        )


def test_global_batches_are_one_contiguous_chunk_split_over_ranks():
    options = dict(query_emb=QUERY, positive_emb=POSITIVE, target_degree=20, device="cpu", seed=3)
    single = GCBSBatchSampler(num_examples=240, batch_size=80, **options)
    split = GCBSBatchSampler(num_examples=240, batch_size=40, world_size=2, **options)
    for epoch in (0, 1):
        whole, stream = single.batches(epoch), split.batches(epoch)
        assert len(stream) == len(split) == 2 * len(whole) == 6
        assert [stream[2 * g] + stream[2 * g + 1] for g in range(len(whole))] == whole
    # Topical: each global batch (both ranks' slices) comes from one contiguous stretch of the order.
    purity = np.mean([np.bincount(TOPIC[b]).max() / len(b) for b in split.batches(0)])
    assert purity > 0.9
    legacy = GCBSBatchSampler(num_examples=240, batch_size=40, world_size=2, global_batches=False, **options)
    assert len(legacy) == 6 and legacy.batches(0) != split.batches(0)


# ----------------------------------------------------------------- key blocks and memory budget
KB_QUERY, KB_POSITIVE, _ = planted_embeddings(num_topics=6, per_topic=50, dim=16, noise=0.3, seed=9)
KB_OPTIONS = dict(num_examples=300, batch_size=30, target_degree=20, device="cpu", precision="fp32",
                  chunk_size=64, seed=2)  # fmt: skip


def _kb_budget(block: int) -> int:
    """A budget whose largest fitting key block is ``block`` (threshold pass, d = 16, 64 rows, fp32)."""
    from hardbatch.graph.threshold import threshold_working_set

    return threshold_working_set(block, 16, 64, "fp32")


@pytest.mark.parametrize("fixed", [True, False])
def test_key_blocks_and_a_memory_budget_give_the_unblocked_batches(fixed):
    teacher = (
        dict(query_emb=KB_QUERY, positive_emb=KB_POSITIVE)
        if fixed
        else dict(embed_fn=lambda epoch: (KB_QUERY, KB_POSITIVE))
    )
    whole = GCBSBatchSampler(**KB_OPTIONS, **teacher)
    blocked = GCBSBatchSampler(**KB_OPTIONS, **teacher, key_block_size=37)
    budget = GCBSBatchSampler(**KB_OPTIONS, **teacher, memory_budget=_kb_budget(260))
    for epoch in (0, 1):
        expected = whole.batches(epoch)
        assert blocked.batches(epoch) == expected and budget.batches(epoch) == expected
    # The options reached the graph pass (a sampler that dropped them would record no key blocks).
    assert (blocked.last_stats["key_block_size"], blocked.last_stats["key_blocks"]) == (37, 9)
    assert (budget.last_stats["key_block_size"], budget.last_stats["key_blocks"]) == (260, 2)
    assert "key_blocks" not in whole.last_stats


def test_key_block_options_pass_through_the_registry_factory_and_cli_option_strings():
    from hardbatch.app.cli.inspect_cmd import _parse_options, build_strategy_batches
    from hardbatch.samplers import SamplerInputs, build_sampler, sampler_factory
    from hardbatch.train.config import check_sampler_options

    reference = GCBSBatchSampler(**KB_OPTIONS, query_emb=KB_QUERY, positive_emb=KB_POSITIVE).batches(0)
    own = {k: v for k, v in KB_OPTIONS.items() if k not in ("num_examples", "batch_size")}
    inputs = SamplerInputs(num_examples=300, teacher=(KB_QUERY, KB_POSITIVE))
    # JSON values as `--option gcbs.NAME=VALUE` / `--sampler-option NAME=VALUE` parse them.
    parsed = _parse_options(["gcbs.key_block_size=auto", "gcbs.memory_budget=64MiB"])
    assert parsed == {"gcbs": {"key_block_size": "auto", "memory_budget": "64MiB"}}
    assert _parse_options(["gcbs.key_block_size=37"]) == {"gcbs": {"key_block_size": 37}}
    check_sampler_options("gcbs", {**parsed["gcbs"], "precision": "fp32"})
    auto = build_sampler("gcbs", inputs, 30, **own, **parsed["gcbs"])
    assert auto.batches(0) == reference and auto.last_stats["key_block_size"] == 300
    make = sampler_factory("gcbs", query_emb=KB_QUERY, positive_emb=KB_POSITIVE, key_block_size=37, **own)
    made = make(list(range(300)), batch_size=30, drop_last=True, valid_label_columns=None, seed=2)
    assert made.batches(0) == reference and made.last_stats["key_blocks"] == 9
    _, _, details = build_strategy_batches(
        ["gcbs"], list(range(300)), 30, KB_QUERY, KB_POSITIVE, seed=2,
        options={"gcbs": {**own, "key_block_size": 37}},
    )  # fmt: skip
    assert details["gcbs"]["gcbs"]["key_blocks"] == 9


BAD_KEY_BLOCKS = {
    **bad_key_blocks("threshold graph", {"graph_method": "ivf"}),
    "precision": (dict(precision="fp16"), "unknown precision 'fp16'"),
}


@pytest.mark.parametrize("case", sorted(BAD_KEY_BLOCKS))
def test_bad_key_block_options_fail_at_construction(case):
    from hardbatch.samplers import SamplerInputs, build_sampler

    bad, message = BAD_KEY_BLOCKS[case]

    def never(epoch):
        raise AssertionError("embedded before the options were checked")

    options = {**KB_OPTIONS, **bad}
    with pytest.raises(ConfigError, match=message):
        GCBSBatchSampler(**options, embed_fn=never)
    with pytest.raises(ConfigError, match=message):
        GCBSBatchSampler(**options, query_emb=KB_QUERY, positive_emb=KB_POSITIVE)
    own = {k: v for k, v in options.items() if k not in ("num_examples", "batch_size")}
    with pytest.raises(ConfigError, match=message):
        build_sampler("gcbs", SamplerInputs(num_examples=300, teacher=(KB_QUERY, KB_POSITIVE)), 30, **own)


def test_a_budget_too_small_for_the_fixed_embeddings_fails_at_construction():
    # Fits 256 keys of d = 1 (the stand-in before embed_fn has run) but not of the fixed teacher's d = 16.
    from hardbatch.graph.threshold import threshold_working_set

    budget = threshold_working_set(256, 1, 64, "fp32")
    GCBSBatchSampler(**KB_OPTIONS, embed_fn=lambda epoch: (KB_QUERY, KB_POSITIVE), memory_budget=budget)
    with pytest.raises(ConfigError, match="too small for the threshold graph"):
        GCBSBatchSampler(**KB_OPTIONS, query_emb=KB_QUERY, positive_emb=KB_POSITIVE, memory_budget=budget)


def test_config_dict_records_the_options_that_decide_the_batches():
    common = dict(num_examples=240, batch_size=40, query_emb=QUERY, positive_emb=POSITIVE, device="cpu")
    exact = GCBSBatchSampler(**common, target_degree=20, sample_size=5000).get_config_dict()
    assert exact["graph_method"] == "exact" and exact["sample_size"] == 5000 and "nprobe" not in exact
    assert "precision" not in exact and "key_block_size" not in exact  # cost, not result
    ivf = GCBSBatchSampler(**common, target_degree=20, graph_method="ivf", nprobe=7).get_config_dict()
    assert ivf["graph_method"] == "ivf" and ivf["nprobe"] == 7 and "recall_target" not in ivf
    grouped = GCBSBatchSampler(**common, target_degree=20, graph_method="ivf_torch", recall_target=0.9)
    config = grouped.get_config_dict()
    assert (
        config["graph_method"] == "ivf_torch" and config["nprobe"] is None and config["recall_target"] == 0.9
    )
    assert sorted(i for batch in grouped for i in batch) == list(range(240))
    assert grouped.history[-1]["graph_search"]["calibrated_recall"] >= 0.9
    with pytest.raises(ConfigError, match="recall_target"):
        GCBSBatchSampler(**common, graph_method="ivf_torch", recall_target=0)
    listed = GCBSBatchSampler(**common, target_degree=20, graph_method="ivf_torch", nlist=5, nprobe=2)
    assert listed.get_config_dict()["nlist"] == 5 and config["nlist"] is None
    assert sorted(i for batch in listed for i in batch) == list(range(240))
    assert listed.history[-1]["graph_search"]["nlist"] == 5  # the default for 240 would be 15
    with pytest.raises(ConfigError, match="nlist"):
        GCBSBatchSampler(**common, graph_method="ivf_torch", nlist=-1)
