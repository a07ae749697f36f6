"""The no-duplicates sampler on data that really has duplicate texts (within and across columns).

With all-unique rows (``test_sampler_properties``'s fixture) the no-duplicates sampler is the random one,
so that fixture cannot tell them apart. Here about half the queries repeat and each row's negative is the
next row's positive: a sampler that ignores texts puts a repeated text into some batch in almost every
epoch (≈ 6 expected collisions per epoch for a random batching).
"""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st
from properties import base_remainder, check_sampler_properties

from hardbatch.samplers import NoDuplicatesBatchSampler, RandomBatchSampler

N, B = 203, 8
ROWS = [
    {
        "query": f"query {i % 110}",  # 93 queries appear twice
        "positive": f"positive {i}",
        "negative": f"positive {(i + 1) % N}",  # another row's positive: a cross-column duplicate
        "id": str(i),
    }
    for i in range(N)
]


def _texts(row) -> list[str]:
    return [row["query"], row["positive"], row["negative"]]


def _repeats(batch: list[int]) -> list[str]:
    counts = Counter(text for i in batch for text in _texts(ROWS[i]))
    return [text for text, count in counts.items() if count > 1]


def make_nodup(**kw):
    return NoDuplicatesBatchSampler(ROWS, batch_size=B, **kw)


def test_properties_with_duplicates():
    # Only rows sharing a text can be deferred to the (dropped) remainder.
    check_sampler_properties(
        make_nodup, max_uncovered=lambda s: base_remainder(s) + s.num_rows_with_shared_text
    )


@given(seed=st.integers(0, 2**16), epoch=st.integers(0, 6), world_size=st.sampled_from([1, 2]))
def test_no_text_repeats_within_a_batch(seed, epoch, world_size):
    sampler = make_nodup(seed=seed, world_size=world_size, drop_last=False)
    batches = sampler.batches(epoch)
    assert all(not _repeats(batch) for batch in batches), [_repeats(b) for b in batches if _repeats(b)]
    covered = sum(len(b) for b in batches)
    assert covered >= N - 2 * B * world_size  # duplicates here are pairs: little is deferred past the end


def test_the_fixture_catches_a_sampler_that_ignores_texts():
    # The random sampler with the same seeds repeats a text in nearly every epoch.
    epochs_with_repeats = sum(
        any(_repeats(b) for b in RandomBatchSampler(num_examples=N, batch_size=B, seed=s).batches(0))
        for s in range(20)
    )
    assert epochs_with_repeats >= 18


def test_len_is_that_of_the_epoch_about_to_be_iterated():
    # Seed 901 gives 26, 26, 25 batches in epochs 0-2: len() must follow the epoch, and the property
    # suite must compare each iteration with the len() taken before it (it once compared with the next).
    sampler = make_nodup(seed=901, world_size=1, drop_last=False)
    counts = [len(sampler.batches(epoch)) for epoch in range(3)]
    assert len(set(counts)) > 1, counts  # the fixture really has epoch-dependent lengths
    for epoch in range(3):
        assert sampler.epoch == epoch
        expected = len(sampler)
        assert len(list(sampler)) == expected == counts[epoch]
