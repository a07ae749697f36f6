"""Top-k selection with a deterministic tie rule, and the memory budget of a similarity block.

Every exact search in hardbatch (B3's teacher ranking, retrieval evaluation, hardness metrics) selects the
``k`` best columns of (rows × N) score blocks. Two rules hold everywhere:

* **Tie rule.** Results are ordered by score descending and, among equal scores, by column index ascending.
  The rule also decides *which* columns enter the top k when several share the k-th score: the ones with
  the smallest indices. ``torch.topk`` alone is not deterministic on ties, so rows where the k-th score is
  shared by more columns than there are slots left are re-selected explicitly.
* **Block budget.** A score block with its selection temporaries takes about 16 bytes per score; blocks are
  sized to :data:`DEFAULT_BLOCK_BYTES` by :func:`auto_chunk_size`.

:func:`select_topk` returns exactly what :func:`topk_with_ties` returns, faster on wide rows: it first keeps
the best groups of ``G`` ≈ sqrt(N / k) / 2 columns by their maximum (group g holds columns g, g + N/G,
g + 2·N/G, ..., so the maxima are one vectorised pass of elementwise maxima; the best of the N/G maxima are
found the same way, through super-groups), then selects inside those groups only, and proves on every row
that no column outside them could have entered (rows where it cannot, e.g. a tie run wider than the groups
kept, fall back to the full rule).

Time O(rows · N) for one pass over the block plus O(rows · (sqrt(k·N/G) + k·G) · log k); memory
O(rows · (N/G + k·G)).

:func:`merge_topk` combines the top lists of two column ranges (key blocks) under the same rule, so a search
over key blocks returns what one search over all columns returns.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

__all__ = ["DEFAULT_BLOCK_BYTES", "auto_chunk_size", "merge_topk", "select_topk", "topk_with_ties"]

#: Bytes one score block may take when ``chunk_size`` is left to :func:`auto_chunk_size`.
DEFAULT_BLOCK_BYTES = 256 << 20


def _auto_group(width: int, kept: int) -> int:
    """Group size: a power of 2 near sqrt(N / kept) / 2, in [4, 128].

    The two selection passes' widths, N/G maxima and kept·G gathered columns, balance at sqrt(N / kept);
    the gathered pass costs about twice as much per column (a gather, then top-k), hence the /2. Measured on
    2 cores with k = 130 (per block of the search's rows, against the contiguous runs and max_pool1d before):
    20k-wide rows G = 8, 68 vs 79 ms; 50k G = 16, 54 vs 73 ms; 100k G = 16, 55 vs 73 ms; 1M G = 32, 32 vs
    41 ms.
    """
    best = max(1.0, (width / max(1, kept)) ** 0.5 / 2)
    return int(min(128, max(4, 2 ** round(math.log2(best)))))


def auto_chunk_size(num_queries: int, num_corpus: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """Queries per block so that a score block and its temporaries fit in ``block_bytes``.

    Measured (benchmarks/bench_evaluate.py): the fp32 block plus ``torch.topk``'s value/index buffers and the
    tie masks take ~13-14 bytes per score on CPU; 16 bytes are budgeted.

    Example:
        >>> auto_chunk_size(1_000_000, 1_000_000)
        16
    """
    per_query = max(1, num_corpus) * 16
    return int(max(1, min(num_queries, 4096, block_bytes // per_query)))


def _topk_with_ties_slow(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    values, indices = torch.topk(scores, k, dim=1, largest=True, sorted=True)
    kth = values[:, -1:]
    # A row is ambiguous when the k-th score is shared by more columns than made it into the top k;
    # only then may topk have picked arbitrary ones among the tied columns.
    tied_total = (scores == kth).sum(dim=1)
    tied_taken = (values == kth).sum(dim=1)
    ambiguous = (tied_total > tied_taken).nonzero().reshape(-1)
    if len(ambiguous):
        sub = scores[ambiguous]
        sub_kth = kth[ambiguous]
        above = sub > sub_kth
        tied = sub == sub_kth
        slots = k - above.sum(dim=1, keepdim=True)
        chosen = above | (tied & (tied.cumsum(dim=1) <= slots))
        columns = chosen.nonzero()[:, 1].reshape(len(ambiguous), k)
        indices[ambiguous] = columns
        values[ambiguous] = sub.gather(1, columns)
    return _order_by_index(values, indices)


def _order_by_index(values: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's (value, index) pairs ordered by value descending, then index ascending."""
    # First by index ascending, then a stable sort by score descending keeps that order on ties.
    indices, by_index = indices.sort(dim=1)
    values = values.gather(1, by_index)
    values, by_score = values.sort(dim=1, descending=True, stable=True)
    return values, indices.gather(1, by_score)


def topk_with_ties(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of each row, ordered by score descending then column index ascending.

    One ``torch.topk`` of k + 1 values decides every row whose k-th value is above its (k + 1)-th: its
    top k is then unique, and where equal values sit inside it only their order is fixed, by sorting the
    k pairs (O(k log k)). Only rows whose k-th value is shared past the top k (columns tied with it may be
    left out, and the rule picks the lowest indices) take the explicit path over the whole row. (Sending
    every row with any equal pair down that path made a 16,384-wide pool over 200k keys, where nearly
    every fp32 row holds one, cost 3.3 s of ivf_torch's 7 s calibration.)

    Args:
        scores: (rows, N) float tensor without NaN.
        k: 1 <= k <= N.

    Returns:
        ``(values, indices)``: (rows, k) tensors (``scores.dtype``, int64) on ``scores.device``.

    Example:
        >>> values, indices = topk_with_ties(torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0]]), k=2)
        >>> indices.tolist()
        [[1, 2]]
    """
    width = scores.shape[1]
    probe = min(k + 1, width)
    values, indices = torch.topk(scores, probe, dim=1, largest=True, sorted=True)
    equal = values[:, 1:] == values[:, :-1]  # (rows, probe - 1): neighbours in the sorted top
    past_k = (
        equal[:, k - 1] if probe > k else torch.zeros(len(values), dtype=torch.bool, device=values.device)
    )
    inside = equal[:, : k - 1].any(dim=1) & ~past_k
    values, indices = values[:, :k], indices[:, :k]
    reorder = inside.nonzero().reshape(-1)
    if len(reorder):
        values[reorder], indices[reorder] = _order_by_index(values[reorder], indices[reorder])
    ambiguous = past_k.nonzero().reshape(-1)
    if len(ambiguous):
        values[ambiguous], indices[ambiguous] = _topk_with_ties_slow(scores[ambiguous], k)
    return values, indices


def select_topk(
    scores: torch.Tensor,
    k: int,
    *,
    group: int | None = None,
    extra_groups: int = 8,
    ties: Literal["index", "any"] = "index",
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`topk_with_ties`, computed by group pruning: same values, same indices, same order.

    The row's columns are cut into groups of ``group`` (strided: N/G apart; the last N mod G columns are
    kept on every row); the ``k + extra_groups + 1`` groups with the largest maxima are kept (found by
    :func:`_best_groups`) and the exact rule runs on their columns only. That is exact on a row whenever its
    k-th value is strictly above the smallest maximum kept, hence above every group left out (then every
    column that could enter the top k, ties included, was kept); the other rows are re-selected on the full
    row.

    Args:
        scores: (rows, N) float tensor (fp32, bf16, fp16) without NaN.
        k: 1 <= k <= N.
        group: columns per group (default ≈ sqrt(N / (k + extra_groups)) / 2, a power of 2 in [4, 128]).
        extra_groups: groups kept beyond k (room for rows whose best columns share a group).
        ties: ``"index"`` (the tie rule) or ``"any"``: some top k, descending, ties broken arbitrarily: the
            values are the same, the indices one valid choice. For a pre-selection that only needs "every
            column left out scores <= the k-th": bf16 blocks, whose 8-bit mantissas tie on nearly every row
            at k ≈ 400, would otherwise send every row to the full-row tie rule (the bf16 kNN took 4.5× the
            fp32 one at 100k: 323 vs 72 s).

    Returns:
        ``(values, indices)``: (rows, k) tensors (``scores.dtype``, int64), identical to
        ``topk_with_ties(scores, k)`` (with ``ties="any"``: the same values).

    Example:
        >>> s = torch.arange(200.0).remainder(7).reshape(2, 100)
        >>> torch.equal(select_topk(s, 5, group=4)[1], topk_with_ties(s, 5)[1])
        True
    """
    num_rows, width = scores.shape
    kept = k + extra_groups
    group = group or _auto_group(width, kept)
    stride = width // group  # number of groups; group g holds columns g, g + stride, g + 2·stride, ...
    if ties not in ("index", "any"):
        raise ValueError(f"ties must be 'index' or 'any', got {ties!r}")
    if stride < 4 * (kept + 1) or num_rows == 0 or not scores.is_contiguous():  # pruning would not pay
        return _topk_any(scores, k) if ties == "any" else topk_with_ties(scores, k)
    # Strided groups: the maxima are an elementwise max of ``group`` contiguous (rows, stride) slices,
    # which vectorises along the row (100k-wide rows, G = 32, 2 threads: 30 ms per 1,024 rows against
    # 45 ms for a reduction over runs of 32 adjacent columns and 77 ms for max_pool1d).
    maxima = _strided_maxima(scores, group)
    top_groups, left_out_max = _best_groups(maxima, kept)  # kept + 1 groups: the bound is one of them
    columns = _group_members(top_groups, group, width)
    gathered = scores.gather(1, columns)
    if ties == "any":
        # Always a top set, no proof needed: the kept + 1 groups gathered hold kept + 1 > k maxima, each at
        # least every maximum left out, so the k-th gathered value is too.
        values, positions = torch.topk(gathered, k, dim=1, sorted=True)
        return values, columns.gather(1, positions)
    values, positions = torch.topk(gathered, k + 1, dim=1, sorted=True)
    # Unique answer when the k + 1 best kept values are strictly decreasing; exact when the k-th beats
    # every group left out (then no column outside the kept ones could have entered).
    unproven = (values[:, 1:] == values[:, :-1]).any(dim=1) | (values[:, k - 1] <= left_out_max)
    values, indices = values[:, :k], columns.gather(1, positions[:, :k])
    redo = unproven.nonzero().reshape(-1)
    if len(redo):
        values[redo], indices[redo] = topk_with_ties(scores[redo], k)
    return values, indices


def _topk_any(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.topk(scores, k, dim=1, largest=True, sorted=True)


def _strided_maxima(scores: torch.Tensor, group: int) -> torch.Tensor:
    """(rows, N // group) maxima of the strided groups: group g holds columns g, g + N // group, ..."""
    num_rows, width = scores.shape
    stride = width // group
    return scores.as_strided((num_rows, group, stride), (width, stride, 1)).amax(dim=1)


def _group_members(groups: torch.Tensor, group: int, width: int) -> torch.Tensor:
    """Column indices of the strided ``groups`` (rows, g) of ``group`` columns, then the N mod G tail.

    The last ``width mod group`` columns belong to no group, so every row keeps them.
    """
    num_rows, count = groups.shape
    stride = width // group
    members = torch.arange(group, device=groups.device) * stride
    columns = (groups[:, :, None] + members).reshape(num_rows, count * group)
    tail = width - stride * group
    if not tail:
        return columns
    extra = torch.arange(stride * group, width, device=groups.device).expand(num_rows, tail)
    return torch.cat([columns, extra], dim=1)


def _best_groups(maxima: torch.Tensor, kept: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``kept + 1`` groups of each row with the largest maxima, and the smallest of those maxima.

    Returns ``(groups, bound)``: (rows, kept + 1) int64 group ids in no particular order, and (rows,) the
    (kept + 1)-th largest maximum, so ``maxima[r, g] <= bound[r]`` for every group g left out (a sorted
    top-k would cost more and tell no more). On wide rows the maxima are pruned like the scores:
    super-groups of ``F`` ≈ sqrt(groups / kept) groups (strided), then the best groups among the
    ``kept + 1`` best super-groups, which replaces a top-k over all N/G maxima by two over ~sqrt(kept·N/G)
    each (671 rows of 100k scores, G = 16, 2 threads: 16-17 ms instead of 25-27). Same answer: the
    candidates hold each chosen super-group's best group, so their (kept + 1)-th largest maximum is at
    least the maximum of every super-group left out.
    """
    count = maxima.shape[1]
    fold = int(max(1.0, (count / max(1, kept)) ** 0.5))
    if fold < 2 or count // fold < 4 * (kept + 1):
        top_max, groups = torch.topk(maxima, kept + 1, dim=1, sorted=False)
        return groups, top_max.amin(dim=1)
    super_groups = torch.topk(_strided_maxima(maxima, fold), kept + 1, dim=1, sorted=False).indices
    candidates = _group_members(super_groups, fold, count)
    top_max, positions = torch.topk(maxima.gather(1, candidates), kept + 1, dim=1, sorted=False)
    return candidates.gather(1, positions), top_max.amin(dim=1)


def _merge_ordered(
    values_a: torch.Tensor, indices_a: torch.Tensor, values_b: torch.Tensor, indices_b: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two best-first lists whose A indices all lie below B's: each entry's place by counting.

    An A entry is preceded by the B entries scoring strictly higher (an equal B score has the larger index);
    a B entry by the A entries scoring higher or equal. Two batched binary searches give those counts, so
    the merge costs O((a + b) · log(a + b)) comparisons and no top-k.
    """
    num_rows, width_a = values_a.shape
    width_b = values_b.shape[1]
    ascending_a, ascending_b = (-values_a).contiguous(), (-values_b).contiguous()
    dev = values_a.device
    place_a = torch.arange(width_a, device=dev) + torch.searchsorted(ascending_b, ascending_a, right=False)
    place_b = torch.arange(width_b, device=dev) + torch.searchsorted(ascending_a, ascending_b, right=True)
    values = values_a.new_empty(num_rows, width_a + width_b)
    indices = torch.empty(num_rows, width_a + width_b, dtype=torch.int64, device=dev)
    values.scatter_(1, place_a, values_a).scatter_(1, place_b, values_b)
    indices.scatter_(1, place_a, indices_a.long()).scatter_(1, place_b, indices_b.long())
    return values[:, :k], indices[:, :k]


def merge_topk(
    values_a: torch.Tensor,
    indices_a: torch.Tensor,
    values_b: torch.Tensor,
    indices_b: torch.Tensor,
    k: int,
    *,
    ordered: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` of the union of two candidate lists per row, by the tie rule (score desc, index asc).

    With ``(values_a, indices_a)`` the top list of columns ``A`` and ``(values_b, indices_b)`` that of
    disjoint columns ``B`` (each best first under the tie rule, holding min(k, |A|) and min(k, |B|) entries),
    the result is the top ``k`` of ``A ∪ B``: every column of the union's top k is in its own part's top k,
    because the order is total (no two columns share an index). Scores are carried, never recomputed. When
    every index of A is below every index of B (a search merging key blocks in order) the two lists are
    merged by counting (two batched binary searches); otherwise they are sorted.

    Args:
        values_a: (rows, a) float scores, best first; ``indices_a``: (rows, a) int global column indices.
        values_b: (rows, b) float scores (same dtype), best first; ``indices_b``: (rows, b) int, disjoint
            from ``indices_a``.
        k: entries kept, ``k <= a + b``.
        ordered: the caller guarantees every A index is below every B index in each row (None: checked).

    Returns:
        ``(values, indices)``: (rows, k) tensors, best first; ``indices`` int64. Time O(rows · (a+b) · log(a+b)).

    Example:
        >>> v, i = merge_topk(torch.tensor([[2.0, 1.0]]), torch.tensor([[7, 3]]),
        ...                   torch.tensor([[2.0, 1.0]]), torch.tensor([[5, 9]]), 3)
        >>> i.tolist(), v.tolist()
        ([[5, 7, 3]], [[2.0, 2.0, 1.0]])
    """
    if ordered is None:
        ordered = not (indices_a.shape[1] and indices_b.shape[1]) or bool(
            (indices_a.amax(1) < indices_b.amin(1)).all()
        )
    if ordered:
        return _merge_ordered(values_a, indices_a, values_b, indices_b, k)
    values = torch.cat([values_a, values_b], dim=1)
    indices = torch.cat([indices_a.long(), indices_b.long()], dim=1)
    # Index ascending first; the stable sort by score descending then keeps that order among equal scores.
    indices, by_index = indices.sort(dim=1)
    values, by_score = values.gather(1, by_index).sort(dim=1, descending=True, stable=True)
    return values[:, :k], indices.gather(1, by_score)[:, :k]
