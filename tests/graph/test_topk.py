"""select_topk: group pruning gives exactly the tie rule's answer, including on tie runs and tails."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hardbatch.graph.topk import select_topk, topk_with_ties


def _reference(scores: np.ndarray, k: int) -> np.ndarray:
    # Score descending, then index ascending (float64 lexsort: no torch involved).
    return np.stack([np.lexsort((np.arange(len(row)), -row.astype(np.float64)))[:k] for row in scores])


@pytest.mark.parametrize("width", [4096, 4099, 6000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["distinct", "ties", "tie_run"])
def test_select_topk_equals_tie_rule(width, dtype, kind):
    rng = np.random.default_rng(width)
    if kind == "distinct":
        scores = rng.permutation(width * 6).reshape(6, width)[:, :width].astype(np.float32)
    elif kind == "ties":
        scores = rng.integers(0, 40, size=(6, width)).astype(np.float32)  # heavy ties at every boundary
    else:
        # A run of equal maxima wider than the kept groups: the pruning cannot prove it, the fallback must.
        scores = rng.normal(size=(6, width)).astype(np.float32)
        scores[:, rng.permutation(width)[:400]] = 10.0
    scores_t = torch.from_numpy(scores).to(dtype)
    k = 17
    values, indices = select_topk(scores_t, k, group=16)
    expected = _reference(scores_t.float().numpy(), k)
    np.testing.assert_array_equal(indices.numpy(), expected)
    np.testing.assert_array_equal(
        values.float().numpy(), np.take_along_axis(scores_t.float().numpy(), expected, 1)
    )
    ref_values, ref_indices = topk_with_ties(scores_t, k)
    assert torch.equal(indices, ref_indices) and torch.equal(values, ref_values)


def test_select_topk_with_minus_inf_and_narrow_rows():
    scores = torch.full((3, 5000), float("-inf"))
    scores[:, :3] = torch.tensor([3.0, 1.0, 2.0])
    _, indices = select_topk(scores, 5, group=16)
    assert indices[:, :3].tolist() == [[0, 2, 1]] * 3 and indices[:, 3:].tolist() == [[3, 4]] * 3
    narrow = torch.tensor([[1.0, 2.0, 2.0, 0.0]])
    assert select_topk(narrow, 2)[1].tolist() == [[1, 2]]


@pytest.mark.parametrize("where", ["tail", "one_group", "spread"])
def test_select_topk_where_the_best_columns_lie(where):
    # Groups are strided (group g = columns g, g + N/G, ...) and the last N mod G columns belong to none:
    # the best values placed in the tail, or all in one group, must still be found.
    rng = np.random.default_rng(3)
    width, group, k = 5003, 16, 9  # 5003 = 16 · 312 + 11: an 11-column tail
    scores = rng.normal(size=(4, width)).astype(np.float32)
    stride = width // group
    if where == "tail":
        best = np.arange(stride * group, width)
    elif where == "one_group":
        best = 5 + stride * np.arange(group)
    else:
        best = rng.permutation(width)[:k]
    scores[:, best] = 50.0 + rng.permutation(len(best))[None, :]
    values, indices = select_topk(torch.from_numpy(scores), k, group=group)
    expected = _reference(scores, k)
    np.testing.assert_array_equal(indices.numpy(), expected)
    np.testing.assert_array_equal(values.numpy(), np.take_along_axis(scores, expected, 1))


def test_select_topk_prunes_instead_of_falling_back(monkeypatch):
    # Random rows are proven by the pruning; the full-row rule must not run on (almost) every row.
    import hardbatch.graph.topk as topk_module

    seen = []
    full_rule = topk_module.topk_with_ties

    def spy(scores, k):
        seen.append(len(scores))
        return full_rule(scores, k)

    monkeypatch.setattr(topk_module, "topk_with_ties", spy)
    scores = torch.from_numpy(np.random.default_rng(0).normal(size=(64, 20000)).astype(np.float32))
    _, indices = select_topk(scores, 20)
    np.testing.assert_array_equal(indices.numpy(), _reference(scores.numpy(), 20))
    assert sum(seen) <= 2


@pytest.mark.parametrize("count", [150, 5000, 5003])
@pytest.mark.parametrize("where", ["spread", "one_super_group", "tail", "ties"])
def test_best_groups_are_a_top_set_with_its_bound(count, where):
    # 150 maxima take the one-level path, 5000 and 5003 the super-groups (5003: a 3-group tail at that level).
    from hardbatch.graph.topk import _best_groups

    rng = np.random.default_rng(count)
    kept = 20
    maxima = rng.normal(size=(5, count)).astype(np.float32)
    fold = int((count / kept) ** 0.5)
    if where == "one_super_group":
        maxima[:, 7 + (count // fold) * np.arange(fold)] = 40.0 + np.arange(fold)
    elif where == "tail":
        maxima[:, (count // fold) * fold :] = 50.0
    elif where == "ties":
        maxima = rng.integers(0, 8, size=(5, count)).astype(np.float32)
    groups, bound = _best_groups(torch.from_numpy(maxima), kept)
    assert groups.shape == (5, kept + 1)
    expected_bound = -np.sort(-maxima, axis=1)[:, kept]
    np.testing.assert_array_equal(bound.numpy(), expected_bound)
    for row, chosen, limit in zip(maxima, groups.numpy(), expected_bound):
        assert len(set(chosen.tolist())) == kept + 1
        assert (row[chosen] >= limit).all()
        left_out = np.setdiff1d(np.arange(count), chosen)
        assert (row[left_out] <= limit).all()


@pytest.mark.parametrize("kind", ["bf16_normal", "ties", "tie_run", "tail", "narrow"])
def test_select_topk_any_ties_is_a_top_set_with_the_rules_values(kind):
    """ties="any": the tie rule's values, and indices that are *a* top k (every column left out <= k-th)."""
    rng = np.random.default_rng(11)
    width, k = 20011, 131  # an 11-column tail at the auto group size
    if kind == "narrow":  # too few groups to prune: torch's own top-k
        width, kind = 900, "bf16_normal"
    if kind == "ties":
        scores = torch.from_numpy(rng.integers(0, 60, size=(8, width)).astype(np.float32))
    elif kind == "tie_run":  # equal maxima wider than the kept groups: the fallback must decide
        scores = torch.from_numpy(rng.normal(size=(8, width)).astype(np.float32))
        scores[:, torch.from_numpy(rng.permutation(width)[:3000])] = 9.0
    else:  # bf16 rounding of normal scores: ties across nearly every row's k-th value
        scores = torch.from_numpy((0.1 * rng.normal(size=(8, width))).astype(np.float32)).bfloat16()
        if kind == "tail":
            scores[:, -11:] = 5.0
    values, indices = select_topk(scores, k, ties="any")
    rule_values, _ = topk_with_ties(scores, k)
    assert torch.equal(values, rule_values)
    assert torch.equal(scores.gather(1, indices), values)
    assert all(len(set(row.tolist())) == k for row in indices)  # k distinct columns
    left_out = scores.clone()
    left_out.scatter_(1, indices, float("-inf"))
    assert bool((left_out.amax(dim=1) <= values[:, -1]).all())
    with pytest.raises(ValueError, match="ties"):
        select_topk(scores, k, ties="first")


@pytest.mark.parametrize("k", [1, 5, 12, 13])
def test_topk_with_ties_orders_inner_ties_and_resolves_ties_past_k(k):
    """Rows of the three kinds the fast path tells apart, against a float64 lexsort.

    Row 0: distinct values. Row 1: equal values inside the top k only (reordered, never re-selected).
    Row 2: the k-th value shared with columns outside the top k, in columns after the ones topk may return.
    Row 3: every value equal. k = 13 is the whole row (no (k + 1)-th value to compare with).
    """
    width = 13
    rng = np.random.default_rng(k)
    distinct = rng.permutation(width).astype(np.float32)
    inner = np.array([9, 9, 9, 8, 7, 7, 6, 5, 4, 3, 2, 1, 0], dtype=np.float32)[rng.permutation(width)]
    past_k = rng.integers(0, 3, size=width).astype(np.float32)
    scores = np.stack([distinct, inner, past_k, np.ones(width, np.float32)])
    values, indices = topk_with_ties(torch.from_numpy(scores), k)
    expected = _reference(scores, k)
    np.testing.assert_array_equal(indices.numpy(), expected)
    np.testing.assert_array_equal(values.numpy(), np.take_along_axis(scores, expected, 1))


def test_topk_with_ties_on_wide_random_rows_equals_lexsort():
    rng = np.random.default_rng(5)
    scores = np.round(rng.normal(size=(64, 3000)), 2).astype(np.float32)  # ties inside and across the top
    for k in (1, 40, 400):
        _values, indices = topk_with_ties(torch.from_numpy(scores), k)
        np.testing.assert_array_equal(indices.numpy(), _reference(scores, k))
