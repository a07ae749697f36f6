"""The collator's exact layout, with a tokenizer that gives every text its own token.

(The length-based tokenizer of ``test_collate`` cannot tell "n0a" from "n0b"; this one can.)
"""

from __future__ import annotations

import torch

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
