"""Key layouts: labels point at each query's own positive, and the loss does not depend on the layout."""

from __future__ import annotations

import pytest
import torch

from hardbatch.errors import ConfigError
from hardbatch.losses import grouped_keys, info_nce, stacked_keys
from hardbatch.losses.layouts import grouped_labels, stacked_labels


def test_labels():
    assert stacked_labels(4).tolist() == [0, 1, 2, 3] and stacked_labels(4).dtype == torch.int64
    assert grouped_labels(4, group_size=3).tolist() == [0, 3, 6, 9]
    assert grouped_labels(2, group_size=1).tolist() == [0, 1]
    assert stacked_labels(0).numel() == 0
    with pytest.raises(ConfigError, match="group_size"):
        grouped_labels(2, group_size=0)


def test_labels_select_the_positive_in_both_layouts():
    # Distinct values per (query, slot): the label must pick slot 0 (the positive) of its own query.
    b, m, d = 3, 2, 1
    positives = torch.arange(b, dtype=torch.float32)[:, None] * 10
    negatives = [positives + j + 1 for j in range(m)]
    for make in (stacked_keys, grouped_keys):
        keys, labels = make(positives, negatives)
        assert keys.shape == (b * (m + 1), d)
        assert keys[labels].flatten().tolist() == [0.0, 10.0, 20.0]
        assert sorted(keys.flatten().tolist()) == sorted(
            torch.cat([positives, *negatives]).flatten().tolist()
        )
    stacked, _ = stacked_keys(positives, negatives)
    assert stacked.flatten().tolist() == [0, 10, 20, 1, 11, 21, 2, 12, 22]
    grouped, _ = grouped_keys(positives, torch.stack(negatives, dim=1))
    assert grouped.flatten().tolist() == [0, 1, 2, 10, 11, 12, 20, 21, 22]


def test_loss_is_the_same_in_both_layouts():
    gen = torch.Generator().manual_seed(0)
    query, positive = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen)
    negatives = torch.randn(5, 3, 8, generator=gen)
    losses = [
        info_nce(query, *make(positive, negatives), scale=10.0) for make in (stacked_keys, grouped_keys)
    ]
    torch.testing.assert_close(losses[0], losses[1])


def test_shape_errors():
    with pytest.raises(ConfigError, match=r"negatives\[0\]"):
        stacked_keys(torch.zeros(2, 4), [torch.zeros(3, 4)])
    with pytest.raises(ConfigError, match="positives"):
        grouped_keys(torch.zeros(2, 4, 1))
