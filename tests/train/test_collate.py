from __future__ import annotations

import pytest
import torch

from hardbatch.errors import DataError
from hardbatch.train.collate import PairCollator


def _tokenize(texts):
    # A transparent stand-in tokenizer: one row per text, the text's length as its only token.
    lengths = torch.tensor([[len(t)] for t in texts])
    return {"input_ids": lengths, "attention_mask": torch.ones_like(lengths)}


ROWS = [
    {"query": "q0", "positive": "p0", "negatives": ["n0a", "n0b"], "id": "a"},
    {"query": "q1", "positive": "p1", "negatives": ["n1a"], "id": "b"},
]


def test_layout_positives_then_row_negatives_query_major():
    batch = PairCollator(_tokenize)(ROWS)
    assert batch.num_queries == 2
    # Row b has one negative, so one per row is used: p0, p1, n0a, n1a.
    assert batch.num_extra == 2
    assert batch.document["input_ids"].reshape(-1).tolist() == [2, 2, 3, 3]
    capped = PairCollator(_tokenize, num_negatives=0)(ROWS)
    assert capped.num_extra == 0 and capped.document["input_ids"].shape[0] == 2


def test_too_few_negatives_names_the_row():
    with pytest.raises(DataError, match="row id=b"):
        PairCollator(_tokenize, num_negatives=2)(ROWS)


def test_batch_negatives_replace_row_negatives_and_duplicates_get_equal_ids():
    batch = PairCollator(_tokenize)(ROWS, batch_negatives=["p1", "zzz", "yy"])
    assert batch.num_extra == 3
    assert batch.key_ids.shape == (5,)
    # The mined negative "p1" is query 1's positive: same id, so the loss masks it for query 1.
    assert batch.key_ids[2] == batch.query_ids[1]
    assert batch.key_ids[3] != batch.query_ids[0]
    plain = PairCollator(_tokenize, mask_duplicates=False)(ROWS)
    assert plain.query_ids is None and plain.key_ids is None


def test_empty_batch_and_bad_rows_are_errors():
    with pytest.raises(DataError):
        PairCollator(_tokenize)([])
    with pytest.raises(DataError, match="'positive'"):
        PairCollator(_tokenize)([{"query": "q", "positive": "", "id": "x"}])


def test_real_tokenizer(tiny_model):
    batch = PairCollator(tiny_model.preprocess)(ROWS[:1]).to("cpu")
    assert batch.query["input_ids"].shape[0] == 1
    assert batch.document["input_ids"].shape[0] == 3
