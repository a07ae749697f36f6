"""The collator's exact layout, with a tokenizer that gives every text its own token.

(The length-based tokenizer of ``test_collate`` cannot tell "n0a" from "n0b"; this one can.)
"""

from __future__ import annotations

import pytest
import torch

from hardbatch.errors import DataError
from hardbatch.train.collate import PairCollator

ROWS = [
    {"query": "q0", "positive": "p0", "negatives": ["n0a", "n0b", "n0c"], "id": "a"},
    {"query": "q1", "positive": "p1", "negatives": ["n1a", "n1b", "n1c", "n1d"], "id": "b"},
    {"query": "q2", "positive": "p2", "negatives": ["n2a", "n2b", "n2c"], "id": "c"},
]


class _Vocabulary:
    """One distinct token per distinct text (ids in order of first appearance), so order is visible."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def __call__(self, texts):
        tokens = torch.tensor([[self.ids.setdefault(t, len(self.ids))] for t in texts])
        return {"input_ids": tokens, "attention_mask": torch.ones_like(tokens)}

    def texts(self, features) -> list[str]:
        names = {v: k for k, v in self.ids.items()}
        return [names[int(i)] for i in features["input_ids"].reshape(-1)]


def test_queries_then_positives_then_each_rows_first_negatives_query_major():
    vocab = _Vocabulary()
    batch = PairCollator(vocab, num_negatives=2)(ROWS)
    assert vocab.texts(batch.query) == ["q0", "q1", "q2"]
    assert vocab.texts(batch.document) == ["p0", "p1", "p2", "n0a", "n0b", "n1a", "n1b", "n2a", "n2b"]
    assert (batch.num_queries, batch.num_extra) == (3, 6)


def test_default_uses_as_many_negatives_as_every_row_has_from_the_front():
    vocab = _Vocabulary()
    batch = PairCollator(vocab)(ROWS)  # the shortest row has 3
    assert vocab.texts(batch.document)[3:] == ["n0a", "n0b", "n0c", "n1a", "n1b", "n1c", "n2a", "n2b", "n2c"]


def test_batch_negatives_are_appended_in_their_given_order():
    vocab = _Vocabulary()
    batch = PairCollator(vocab)(ROWS, batch_negatives=["z", "p1", "y"])
    assert vocab.texts(batch.document) == ["p0", "p1", "p2", "z", "p1", "y"]
    # Text ids follow the texts: the mined "p1" is query 1's positive again.
    assert batch.query_ids.tolist() == batch.key_ids[:3].tolist()
    assert batch.key_ids[4] == batch.query_ids[1] and len(set(batch.key_ids.tolist())) == 5


def test_one_negative_per_row():
    vocab = _Vocabulary()
    batch = PairCollator(vocab, num_negatives=1)(ROWS)
    assert vocab.texts(batch.document) == ["p0", "p1", "p2", "n0a", "n1a", "n2a"]


def test_to_moves_every_tensor_and_keeps_every_field():
    batch = PairCollator(_Vocabulary(), num_negatives=2)(ROWS, batch_negatives=None)
    batch.query["text_keys"] = ["q"]  # non-tensor values pass through
    moved = batch.to("meta")  # a device other than the CPU, available everywhere
    for features in (moved.query, moved.document):
        assert all(v.device.type == "meta" for v in features.values() if isinstance(v, torch.Tensor))
    assert moved.query["text_keys"] == ["q"]
    assert moved.query["input_ids"].shape == batch.query["input_ids"].shape
    assert moved.document["input_ids"].shape == batch.document["input_ids"].shape
    assert (moved.num_queries, moved.num_extra) == (3, 6)
    assert torch.equal(moved.query_ids, batch.query_ids) and torch.equal(moved.key_ids, batch.key_ids)


def test_slice_features_slices_row_tensors_only():
    from hardbatch.train.collate import slice_features

    features = {"input_ids": torch.arange(4), "scale": torch.tensor(2.0), "names": ["a", "b", "c", "d"]}
    part = slice_features(features, 1, 3)
    assert part["input_ids"].tolist() == [1, 2]
    assert part["scale"].item() == 2.0 and part["scale"].dim() == 0  # 0-dim: passed through
    assert part["names"] == ["a", "b", "c", "d"]


def test_error_messages_name_the_row_and_the_fix():
    vocab = _Vocabulary()
    with pytest.raises(DataError, match=r"^cannot collate an empty batch$"):
        PairCollator(vocab)([])
    with pytest.raises(DataError) as info:
        PairCollator(vocab)([{"query": "q", "positive": 3, "id": "r7"}])
    assert str(info.value) == "row id=r7: field 'positive' must be a non-empty string or an image"
    with pytest.raises(DataError) as info:
        PairCollator(vocab)([{"query": "", "positive": "p"}])
    assert str(info.value) == "row id=?: field 'query' must be a non-empty string or an image"
    with pytest.raises(DataError) as info:
        PairCollator(vocab, num_negatives=4)(ROWS)
    assert str(info.value) == (
        "row id=a: has 3 negatives, 4 are needed (set num_negatives lower or fix the data)"
    )
    with pytest.raises(DataError, match=r"^row id=\?: has 0 negatives, 1 are needed"):
        PairCollator(vocab, num_negatives=1)([{"query": "q", "positive": "p", "negatives": []}])
