"""IVF kNN for mining: every row searched, one matmul per group of rows, exact inside the probed lists.

faiss's ``IndexIVFFlat`` answers one query at a time: at N = 1M it searched at ~1/40 of matmul speed (538 s
for 0.4 % of the N × N products, Intel Xeon, 2 cores; ``benchmarks/results/b3_large_1000000.md``). Mining
searches *every* example, so the rows can be grouped instead: rows whose nearest centroid is the same form a
group, the group probes the ``nprobe`` lists nearest to its mean row, and the group × probed-keys block is
one matmul scored and selected by :func:`hardbatch.graph.knn.knn_exact` — fp32, or bf16 with fp32
re-scoring and its per-row proof where bf16 is fast. Within the probed keys the answer is exact (the tie rule
of :mod:`hardbatch.graph.topk` by global key index); what the search misses is the keys outside them, and
that is measured: with ``recall_target`` (default 0.95), ``nprobe`` is the smallest on a ladder (×√2 steps)
whose recall over ``recall_columns`` (B3: the window [skip, skip + window)) reaches the target on
``calibration_sample`` rows against the exact answer. The trace is in ``info``.

Centroids: spherical k-means on the search device (:func:`hardbatch.graph.kmeans.spherical_kmeans`, 20
iterations) on ``256 · nlist`` sampled keys. By default ``nlist`` starts at ≈ √N_keys (groups of ~√N rows,
lists of ~√N keys: the blocks stay large enough for a fast matmul) and doubles, with a new k-means and
calibration, while the k-means of twice the lists costs under a sixth of the products of the calibrated
search (:func:`more_lists`); the doubled lists are kept when their search computes fewer products. Finer
lists reach the same recall with fewer products, so this matters where the search dominates: window recall
0.95 on 1M ``lowdim`` needed 25.7 % of the products with 1,000 lists and 6.4 % with 2,000. The tries are in
``info["nlist_tries"]``.

Cost, with L = ``nlist``, P = ``nprobe`` and lists of about N_keys / L keys: k-means O(20 · 256 L · L · d)
(the list counts tried before the last add at most a third of that);
assignment O((N_rows + N_keys) · L · d); search O(N_rows · P · N_keys / L · d) at matmul speed (the fraction
of the exact search done is ``info["searched_fraction"]``, about P / L); calibration O(S · N_keys · d) for the
exact answer of S sampled rows plus O(S · P · N_keys / L · d) per ladder step. Memory: the keys resident
(N_keys · d fp32, plus a bf16 copy in bf16 mode), one group's rows and probed keys
(O((N_rows / L + P · N_keys / L) · d)), its score block (256 MiB: 64M fp32 or 128M bf16 scores, with
selection temporaries of about 1.5 bytes per bf16 score) and the result O(N_rows · k).

Over ranks (:func:`ivf_layout` with a :class:`~hardbatch.distributed.WorkSplit`, as
:mod:`hardbatch.mining.distributed` uses it): the k-means, the assignment, the group means and the
calibration are shared in fixed blocks, and every rank gets the one-process layout; :func:`search_groups`
then searches any subset of the groups.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hardbatch.device import resolve_device
from hardbatch.distributed import WorkSplit
from hardbatch.errors import ConfigError
from hardbatch.graph.kmeans import bucket_sums, spherical_kmeans
from hardbatch.graph.knn import (
    _DEFAULT_MARGIN,
    KnnResult,
    _auto_chunk,
    _bf16_key_bounds,
    _bf16_topk,
    _drop_self,
    _fp32_topk,
    _overlap,
    check_aligned,
    check_k,
    knn_exact,
)
from hardbatch.graph.precision import resolve_precision
from hardbatch.graph.similarity import ScoreBuffer, as_tensor, block_scores, take_rows
from hardbatch.graph.topk import DEFAULT_BLOCK_BYTES, select_topk
from hardbatch.progress import progress

__all__ = [
    "IvfLayout",
    "auto_lists",
    "finish_info",
    "ivf_keys",
    "ivf_layout",
    "knn_ivf",
    "probe_ladder",
    "search_groups",
]

#: A group's matmul runs in bf16 only when it has ``_BF16_MIN_WIDTH`` times more candidates than
#: k + ``_CROSSOVER_MARGIN`` (the margin of the first measurements below; the rule is relative to k, not to
#: today's margin): the pre-selection and the re-scoring gather cost more than bf16 saves below that.
#: Measured at 100k, k = 131, AMD Zen 4 (bf16 matmuls ~2.5× fp32): 2,528 candidates bf16 2.1× slower than
#: fp32, 10,100 1.5× slower, 31,600 0.69×; on a Zen 5 (bf16 4.55× fp32, ``lowdim``, a margin adapted from
#: block to block to 36-38, since replaced): 2,590 2.45×, 5,140 1.37×, 10,240 1.17×, 20,300 0.84×.
_BF16_MIN_WIDTH = 64
_CROSSOVER_MARGIN = 128

#: Scores per bf16 block: 256 MiB of bf16, twice the entries of an fp32 block. The groups' candidate lists are
#: wide (~N / 4 at recall 0.95), so fp32-sized blocks cut a group into small row chunks, each paying the
#: pre-selection's and re-scoring's fixed costs. Measured on a Zen 4 (2 cores; 2,088 ``lowdim`` rows × 257k
#: candidates, k = 131, 4 repeats): 261 rows per block 1.83-1.92 s, 522 rows 1.52-1.72 s (bare bf16 matmul
#: 1.26 and 1.17 s), 1,044 rows 1.53-1.62 s; the selection's working set grew by 310, 455 and 766 MB.
_BF16_BLOCK_ENTRIES = DEFAULT_BLOCK_BYTES // 2

#: Calibration: best keys kept per sampled row (the answer at most ladder steps), rows scored per block.
_CALIBRATION_POOL = 16384
_CALIBRATION_ROWS = 64

#: Above this fraction of the N_rows · N_keys products, the exact search (full-width blocks, no gathers) is
#: faster than the grouped one: on codesearch (26k, Zen 4) 80 % searched took 2.3× the bare matmul, exact 1.4×.
_EXACT_ABOVE = 0.5

#: Rows per block of the list assignment and groups per block of the group means: the units a
#: :class:`~hardbatch.distributed.WorkSplit` deals to the ranks (fixed, so the blocks, and the matmul kernels
#: they get, do not depend on the world size).
_ASSIGN_ROWS = 16384
_MEAN_GROUPS = 64

#: Keys sampled per centroid for the k-means (faiss's own cap; at least 39, as faiss asks) and its iterations
#: (20 match faiss's 10 in recall: :mod:`hardbatch.graph.kmeans`). Better lists pay for their k-means: B3 at
#: 1M × 384 (``lowdim``, nprobe 11 of 1,000 within a 1.2 % budget, Zen 4, 2 threads) reached a window recall
#: of 0.751 with 256 keys per list against 0.707 with 64, kNN stage 183 s vs 166 s, whole mine 359 vs 367 s;
#: at 200k the probes for 0.95 fell 23 → 11 and the kNN stage 34.4 → 31.2 s. A threshold graph's edges are a
#: row's very nearest keys, where the lists' quality decides even more (:mod:`hardbatch.graph.ivf_threshold`).
_TRAIN_PER_LIST = 256
_KMEANS_ITERATIONS = 20

#: With the default ``nlist``, the lists are doubled (a new k-means, a new calibration) while the k-means of
#: twice the lists costs fewer products than this fraction of the calibrated search's, and the doubled
#: layout is kept when its search computes fewer products. Finer lists need fewer of the products for the
#: same recall, at a k-means cost that grows as L²: window recall 0.95 on 1M ``lowdim`` needed 25.7 % of the
#: products with 1,000 lists and 6.4 % with 2,000 (k-means + assignment 63 → 146 s, Zen 4); at 200k,
#: 3.6 / 2.6 / 1.8 % with 447 / 894 / 1,788 lists, where the k-means already cost more than the search
#: (the whole kNN 34 / 55 / 126 s). A bf16 search product costs ~0.46 of an fp32 k-means product (Zen 4), and
#: a doubling saved 28-75 % of the search, so 1/6 pays for itself in the worst case measured; the count of
#: products (not a timing) decides, so every rank and machine picks the same lists.
_MORE_LISTS_BELOW = 1 / 6


def auto_lists(num_keys: int) -> int:
    """Default list count to start from: about √N_keys (groups and lists of ~√N), with at least 39 keys per
    list (:func:`ivf_layout` may double it, see :func:`more_lists`).

    Example:
        >>> auto_lists(1_000_000)
        1000
    """
    return max(1, min(round(math.sqrt(num_keys)), num_keys // 39 or 1))


def more_lists(lists: int, num_rows: int, num_keys: int, search_products: int) -> int | None:
    """Twice ``lists`` when its k-means and assignment would cost fewer products than ``_MORE_LISTS_BELOW``
    of ``search_products`` (the calibrated search at ``lists``) and the lists keep ≥ 39 keys; else None.

    Example:
        >>> more_lists(1000, 1_000_000, 1_000_000, 257 * 10**9)  # 1M, 25.7 % searched for the target
        2000
        >>> more_lists(2000, 1_000_000, 1_000_000, 64 * 10**9) is None  # 6.4 %: 4,000 lists cost more
        True
    """
    doubled = 2 * lists
    if doubled > num_keys // 39:
        return None
    kmeans = _KMEANS_ITERATIONS * min(_TRAIN_PER_LIST * doubled, num_keys) * doubled
    assignment = (num_rows + num_keys) * doubled
    return doubled if kmeans + assignment < _MORE_LISTS_BELOW * search_products else None


def probe_ladder(lists: int) -> list[int]:
    """The ``nprobe`` values calibration tries: 1, 2, 3, 4, 6, 8, 11, 16... (×√2), ending at ``lists``.

    Example:
        >>> probe_ladder(20)
        [1, 2, 3, 4, 6, 8, 11, 16, 20]
    """
    values = {min(lists, round(2 ** (i / 2))) for i in range(2 * max(1, lists.bit_length()) + 2)}
    return sorted(values | {lists})


def _rows_tensor(rows: Any, ids: np.ndarray, dev: torch.device, normalize: bool) -> torch.Tensor:
    tensor = as_tensor(take_rows(rows, ids), dev)
    return torch.nn.functional.normalize(tensor, dim=1) if normalize else tensor


def _train_centroids(
    key_t: torch.Tensor,
    lists: int,
    seed: int,
    split: WorkSplit | None = None,
    per_list: int = _TRAIN_PER_LIST,
) -> torch.Tensor:
    """(L, d) unit centroids: spherical k-means on ``per_list · L`` sampled keys, on the keys' device."""
    chosen = np.sort(np.random.default_rng([int(seed), 0x1F]).permutation(len(key_t))[: lists * per_list])
    sample = key_t[torch.as_tensor(chosen, device=key_t.device)].float().cpu().numpy()
    return spherical_kmeans(
        sample, lists, iterations=_KMEANS_ITERATIONS, seed=seed, device=key_t.device, split=split
    )


def _nearest(matrix: Any, centroids: torch.Tensor, device: torch.device) -> np.ndarray:
    """Index of each row's nearest centroid by inner product (fp32, ties to the lower index)."""
    return knn_exact(matrix, centroids, 1, device=device, precision="fp32", show_progress=False).indices[:, 0]


def _assign(
    read: Any, count: int, centroids: torch.Tensor, device: torch.device, split: WorkSplit
) -> np.ndarray:
    """(count,) int64: the nearest centroid of rows ``read(lo, hi)``, ``_ASSIGN_ROWS`` at a time."""
    return split.blocks(
        lambda lo, hi: _nearest(read(lo, hi), centroids, device).astype(np.int64), count, _ASSIGN_ROWS
    )


def _group_means(
    rows: Any, buckets: _Buckets, dim: int, device: torch.device, normalize: bool, split: WorkSplit
) -> torch.Tensor:
    """(L, d) fp32 unit mean of every group's rows (zero for an empty group): float64 sums by
    :func:`~hardbatch.graph.kmeans.bucket_sums`, the same bits whichever rank or thread count computes them."""

    def read(ids: np.ndarray) -> np.ndarray:
        return _rows_tensor(rows, ids, device, normalize).float().cpu().numpy()

    total = split.blocks(
        lambda lo, hi: bucket_sums(read, buckets.order, buckets.bounds, lo, hi, dim, np.float64),
        len(buckets.bounds) - 1,
        _MEAN_GROUPS,
    )
    return torch.nn.functional.normalize(torch.from_numpy(total).float().to(device), dim=1)


class _Buckets:
    """Ids by bucket (keys by list, rows by group): ``members(buckets)`` is their sorted ids."""

    def __init__(self, assignment: np.ndarray, lists: int) -> None:
        self.assignment = assignment
        self.order = np.argsort(assignment, kind="stable").astype(np.int64)
        self.bounds = np.concatenate([[0], np.cumsum(np.bincount(assignment, minlength=lists))])

    def size(self, lists: np.ndarray) -> int:
        return int((self.bounds[lists + 1] - self.bounds[lists]).sum())

    def members(self, lists: np.ndarray) -> np.ndarray:
        return np.sort(np.concatenate([self.order[self.bounds[c] : self.bounds[c + 1]] for c in lists]))


class _Groups:
    """Rows grouped by nearest centroid; each group's lists in probe order (nearest to its mean row first)."""

    def __init__(self, assignment: np.ndarray, probe_order: np.ndarray) -> None:
        self.assignment = assignment
        self.probe_order = probe_order
        self.rows = _Buckets(assignment, len(probe_order))

    @classmethod
    def of_rows(
        cls,
        rows: Any,
        centroids: torch.Tensor,
        device: torch.device,
        normalize: bool,
        split: WorkSplit | None = None,
    ) -> _Groups:
        split = split or WorkSplit()
        lists, dim = centroids.shape

        def read(lo: int, hi: int) -> torch.Tensor:
            return _rows_tensor(rows, np.arange(lo, hi), device, normalize)

        assignment = _assign(read, len(rows), centroids, device, split)
        means = _group_means(rows, _Buckets(assignment, lists), dim, device, normalize, split)
        # Empty groups keep a zero mean; they are never searched.
        probe_order = split.once(
            lambda: knn_exact(
                means, centroids, lists, device=device, precision="fp32", show_progress=False
            ).indices.astype(np.int64)
        )
        return cls(assignment, probe_order)

    def products(self, nprobe: int, keys: _Buckets, at_least: int) -> np.ndarray:
        """(L,) int64: products each group's search at ``nprobe`` computes (0 for empty groups)."""
        sizes = np.diff(self.rows.bounds)
        out = np.zeros(len(sizes), dtype=np.int64)
        for g in np.flatnonzero(sizes):
            out[g] = int(sizes[g]) * keys.size(self.probed(int(g), nprobe, keys, at_least))
        return out

    def searched_fraction(self, nprobe: int, keys: _Buckets, at_least: int) -> float:
        """Products the search at ``nprobe`` computes, as a fraction of N_rows · N_keys."""
        return int(self.products(nprobe, keys, at_least).sum()) / (
            len(self.assignment) * len(keys.assignment)
        )

    def rows_of(self, group: int) -> np.ndarray:
        return self.rows.members(np.array([group]))

    def probed(self, group: int, nprobe: int, keys: _Buckets, at_least: int) -> np.ndarray:
        """The group's first ``nprobe`` lists, and more while they hold fewer than ``at_least`` keys."""
        order = self.probe_order[group]
        count = nprobe
        while count < len(order) and keys.size(order[:count]) < at_least:
            count += 1
        return order[:count]


class _Scorer:
    """Top k of a group's rows among gathered keys: fp32 blocks, or bf16 blocks whose candidates are
    re-scored straight from the resident fp32 keys (one bf16 copy of all keys and one bound, made once)."""

    def __init__(self, key_t: torch.Tensor, precision: str) -> None:
        self.key_t = key_t
        self.key_low = key_t.to(torch.bfloat16) if precision == "bf16" else None
        self.key_bounds = _bf16_key_bounds(key_t, self.key_low) if self.key_low is not None else None
        self.buffer = ScoreBuffer()
        self.redone = self.widened = 0

    def top(self, row_t: torch.Tensor, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices into ``candidates``, float32 scores), (R, k), by the tie rule over ``candidates``' order."""
        columns = torch.as_tensor(candidates, device=self.key_t.device)
        low = self.key_low is not None and len(candidates) >= _BF16_MIN_WIDTH * (k + _CROSSOVER_MARGIN)
        block_keys = (self.key_low if low else self.key_t).index_select(0, columns)
        chunk = _auto_chunk(len(candidates), _BF16_BLOCK_ENTRIES if low else DEFAULT_BLOCK_BYTES // 4)
        indices, scores = [], []
        for lo in range(0, len(row_t), chunk):
            part = row_t[lo : lo + chunk]
            if low:
                values, top, widened, failed = _bf16_topk(
                    part, self.key_t, block_keys, self.key_bounds, k, _DEFAULT_MARGIN, 0, False, self.buffer,
                    key_ids=columns,
                )  # fmt: skip
                self.widened += widened
                self.redone += failed
            else:
                values, top = _fp32_topk(part, block_keys, k, 0, False, self.buffer)
            indices.append(top.cpu().numpy())
            scores.append(values.float().cpu().numpy())
        return np.concatenate(indices), np.concatenate(scores)


def _search_rows(
    rows: Any,
    scorer: _Scorer,
    row_ids: np.ndarray,
    k: int,
    search_k: int,
    lists: np.ndarray,
    keys: _Buckets,
    exclude_self: bool,
    device: torch.device,
    normalize: bool,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Exact top-k of ``row_ids`` among the keys of ``lists``: (indices, scores, products)."""
    candidates = keys.members(lists)
    top, scores = scorer.top(_rows_tensor(rows, row_ids, device, normalize), candidates, search_k)
    found = candidates[top]
    if exclude_self:
        found, scores = _drop_self(found, scores, row_ids, k)
    return found, scores, len(row_ids) * len(candidates)


@dataclass
class IvfLayout:
    """The grouped search's set-up: every rank that searches some of the groups needs exactly this.

    Attributes:
        key_lists: (N_keys,) int64, the list (nearest centroid) of every key.
        row_groups: (N_rows,) int64, the group (nearest centroid) of every row.
        probe_order: (L, L) int64, each group's lists nearest to its mean row first.
        nprobe: lists each group searches (more while they hold fewer than k + 1 keys).
        info: the set-up's report (``nlist``, ``nprobe``, calibration trace, ``exact_fallback``...).
    """

    key_lists: np.ndarray
    row_groups: np.ndarray
    probe_order: np.ndarray
    nprobe: int
    info: dict[str, Any]

    def buckets(self) -> tuple[_Groups, _Buckets]:
        return _Groups(self.row_groups, self.probe_order), _Buckets(self.key_lists, len(self.probe_order))

    def group_products(self, k: int, exclude_self: bool) -> np.ndarray:
        """(L,) int64: the products each group's search computes, its cost (0 for empty groups)."""
        groups, keys = self.buckets()
        return groups.products(self.nprobe, keys, k + 1 if exclude_self else k)


def search_groups(
    rows: Any,
    key_t: torch.Tensor,
    k: int,
    layout: IvfLayout,
    groups: np.ndarray | None = None,
    *,
    exclude_self: bool = False,
    precision: str = "fp32",
    normalize: bool = False,
    show_progress: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """Top k of the rows of ``groups`` (None: every non-empty group), group by group, by ``layout``.

    Args:
        rows: (N_rows, d) float array; only the rows of ``groups`` are read.
        key_t: (N_keys, d) fp32 keys on the search device, normalised when ``normalize`` (as
            :func:`ivf_layout` returns them).
        k: neighbours per row.
        layout: from :func:`ivf_layout` (on any rank).
        groups: (G,) group ids to search.
        exclude_self, normalize: as in :func:`knn_ivf`.
        precision: "fp32" or "bf16" (resolved; the same answer).
        show_progress: progress bar over the groups.

    Returns:
        ``(row_ids, indices, scores, counts)``: (R,) int64 rows in group order, (R, k) int32 key ids and
        float32 scores best first, and ``counts`` (``products``, ``fp32_rows_redone``, ``rows_widened``,
        ``margin``). A group's
        answer does not depend on which other groups are searched with it.
    """
    search_k = k + 1 if exclude_self else k
    row_buckets, keys = layout.buckets()
    if groups is None:
        groups = np.flatnonzero(np.diff(row_buckets.rows.bounds))
    device = key_t.device
    scorer = _Scorer(key_t, precision)
    products = 0
    row_ids, indices, scores = [], [], []
    label = f"kNN (ivf_torch, {precision}, nprobe {layout.nprobe})"
    for group in progress(groups, label, show=show_progress):
        ids = row_buckets.rows_of(int(group))
        if len(ids) == 0:
            continue
        probed = row_buckets.probed(int(group), layout.nprobe, keys, search_k)
        found, found_scores, count = _search_rows(
            rows, scorer, ids, k, search_k, probed, keys, exclude_self, device, normalize
        )
        row_ids.append(ids)
        indices.append(found.astype(np.int32))
        scores.append(found_scores.astype(np.float32))
        products += count
    counts = {"fp32_rows_redone": scorer.redone, "rows_widened": scorer.widened, "products": products,
              "margin": _DEFAULT_MARGIN}  # fmt: skip
    if not row_ids:
        return np.empty(0, np.int64), np.empty((0, k), np.int32), np.empty((0, k), np.float32), counts
    return np.concatenate(row_ids), np.concatenate(indices), np.concatenate(scores), counts


def knn_ivf(
    rows: np.ndarray | torch.Tensor,
    keys: np.ndarray | torch.Tensor,
    k: int,
    *,
    exclude_self: bool = False,
    normalize: bool = False,
    nlist: int | None = None,
    nprobe: int | None = None,
    recall_target: float | None = 0.95,
    recall_columns: tuple[int, int] | None = None,
    calibration_sample: int = 500,
    max_searched_fraction: float | None = None,
    precision: str = "auto",
    device: str | torch.device | None = "auto",
    seed: int = 0,
    show_progress: bool | None = None,
) -> KnnResult:
    """Approximate top-``k`` keys of every row: grouped IVF search, exact inside the probed lists.

    Args:
        rows: (N_rows, d) float array (numpy, memory-mapped numpy or torch); read one group at a time.
        keys: (N_keys, d) float array, held on ``device`` in fp32.
        k: neighbours per row.
        exclude_self: rows and keys are aligned; never return key i for row i.
        normalize: L2-normalise rows and keys first (cosine similarity).
        nlist: lists (default: :func:`auto_lists`, ≈ √N_keys, doubled by :func:`more_lists` while the
            search's products dwarf the k-means's when ``nprobe`` is calibrated; an explicit value is kept).
        nprobe: lists each group searches (default: calibrated to ``recall_target``; 8 without a target).
        recall_target: the recall ``nprobe`` is calibrated to, over ``recall_columns``; None: no calibration.
        recall_columns: result ranks ``(lo, hi)`` the calibration measures (default all k).
        calibration_sample: rows of the calibration (exact check O(sample · N_keys · d), once).
        max_searched_fraction: a time budget: the calibration never picks an ``nprobe`` whose search computes
            more than this fraction of the N_rows · N_keys products (about 2.5-4× that fraction of the bare
            matmul's time on CPU). When the target needs more, the last ladder step within the budget is
            used, ``info["recall_target_met"]`` is False and a warning says what recall it reached. None: no
            budget; past half the products the exact search runs instead (it is cheaper there).
        precision: "auto", "fp32" or "bf16" of the group matmuls (the same answer; see
            :func:`~hardbatch.graph.knn.knn_exact`).
        device: "auto" (CUDA when available) or a torch device.
        seed: k-means seed and calibration sample.
        show_progress: progress bar over groups.

    Returns:
        :class:`~hardbatch.graph.knn.KnnResult` with (N_rows, k) int32 indices and float32 scores, best
        first; ``info`` holds ``index="ivf_torch"``, ``nlist``, ``nprobe``, the ``calibration`` trace
        ``[(nprobe, recall), ...]``, ``calibrated_recall``, ``nlist_tries`` (each list count the default
        tried: its ``nlist``, ``nprobe``, recall, ``searched_fraction`` and seconds), ``searched_fraction``
        (products computed / N_rows · N_keys), the ``precision``, ``fp32_rows_redone`` and the seconds of
        the k-means and list assignment (``lists_s``), of the calibration (``calibration_s``; both summed
        over the tries) and of the search (``search_s``).

    Raises:
        ConfigError: ``k`` out of range, misaligned rows with ``exclude_self``, ``nlist`` / ``nprobe`` that
            are not positive integers, a ``recall_target`` outside (0, 1].

    Complexity: see the module docstring. Needs no faiss (the k-means is :mod:`hardbatch.graph.kmeans`).

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(400, 8)).astype(np.float32)
        >>> result = knn_ivf(x, x, 5, exclude_self=True, nprobe=20, nlist=20, show_progress=False)
        >>> result.info["searched_fraction"]
        1.0
        >>> bool((result.indices == knn_exact(x, x, 5, exclude_self=True).indices).all())
        True
    """
    layout, key_t = ivf_layout(
        rows, keys, k, exclude_self=exclude_self, normalize=normalize, nlist=nlist, nprobe=nprobe,
        recall_target=recall_target, recall_columns=recall_columns, calibration_sample=calibration_sample,
        max_searched_fraction=max_searched_fraction, device=device, seed=seed,
    )  # fmt: skip
    info = {**layout.info, "precision": resolve_precision(precision, key_t.device)}
    started = time.perf_counter()
    if info["exact_fallback"]:
        del key_t
        exact = knn_exact(
            rows, keys, k, exclude_self=exclude_self, normalize=normalize, device=device,
            precision=info["precision"], show_progress=show_progress,
        )  # fmt: skip
        info.update(searched_fraction=1.0, fp32_rows_redone=exact.info["fp32_rows_redone"],
                    search_s=round(time.perf_counter() - started, 3))  # fmt: skip
        return KnnResult(indices=exact.indices, scores=exact.scores, info=info)
    row_ids, found, found_scores, counts = search_groups(
        rows, key_t, k, layout, exclude_self=exclude_self, precision=info["precision"], normalize=normalize,
        show_progress=show_progress,
    )  # fmt: skip
    indices = np.empty((len(rows), k), dtype=np.int32)
    scores = np.empty((len(rows), k), dtype=np.float32)
    indices[row_ids], scores[row_ids] = found, found_scores
    info = finish_info(info, counts, len(rows) * len(keys))
    info["search_s"] = round(time.perf_counter() - started, 3)
    return KnnResult(indices=indices, scores=scores, info=info)


def finish_info(info: dict[str, Any], counts: dict[str, int], pairs: int) -> dict[str, Any]:
    """A grouped search's ``info``: the layout's, with what the search (on one rank or all) counted."""
    out = {**info, "searched_fraction": round(counts["products"] / pairs, 4),
           "fp32_rows_redone": counts["fp32_rows_redone"]}  # fmt: skip
    if out["precision"] == "bf16":
        out.update(margin=counts["margin"], rows_widened=counts["rows_widened"])
    return out


def ivf_layout(
    rows: np.ndarray | torch.Tensor,
    keys: np.ndarray | torch.Tensor,
    k: int,
    *,
    exclude_self: bool = False,
    normalize: bool = False,
    nlist: int | None = None,
    nprobe: int | None = None,
    recall_target: float | None = 0.95,
    recall_columns: tuple[int, int] | None = None,
    calibration_sample: int = 500,
    max_searched_fraction: float | None = None,
    device: str | torch.device | None = "auto",
    seed: int = 0,
    split: WorkSplit | None = None,
) -> tuple[IvfLayout, torch.Tensor]:
    """The set-up of :func:`knn_ivf`: centroids, lists, groups, calibrated ``nprobe`` (arguments as there).

    ``split`` shares the set-up among ranks that all call this with the same inputs
    (``WorkSplit(across_ranks=True)``): the k-means iterations, the list and group assignment, the group
    means and the calibration's sampled rows are computed in blocks dealt to the ranks (the same blocks at
    every world size) and gathered, so every rank returns the single-process layout. Default: alone.

    Returns:
        ``(layout, key_t)``: the :class:`IvfLayout` (``info["exact_fallback"]`` True where the search
        would compute more than half the products, so the exact search should run instead) and the
        (N_keys, d) fp32 keys on the device, normalised when ``normalize``.

    Raises:
        ConfigError: as :func:`knn_ivf`.
    """
    num_rows, num_keys = len(rows), len(keys)
    if exclude_self:
        check_aligned("exclude_self", num_rows, num_keys)
    check_k(k, num_keys, exclude_self)
    check_layout_options(nlist, nprobe, recall_target, max_searched_fraction)
    split = split or WorkSplit()
    started = time.perf_counter()
    key_t = ivf_keys(keys, resolve_device(device), normalize)
    keys_s = time.perf_counter() - started
    lists: int | None = int(min(nlist or auto_lists(num_keys), num_keys))
    adaptive = nlist is None and nprobe is None and recall_target is not None
    calibration = dict(
        target=recall_target, columns=recall_columns, sample=calibration_sample, budget=max_searched_fraction
    )
    tries: list[dict[str, Any]] = []
    best: tuple[IvfLayout, tuple[bool, int]] | None = None
    while lists is not None:
        layout = _calibrated_layout(
            rows, key_t, k, lists, nprobe, calibration, exclude_self, normalize, seed, split
        )
        products = (
            num_rows * num_keys
            if layout.info["exact_fallback"]
            else int(layout.group_products(k, exclude_self).sum())
        )
        tries.append({name: layout.info.get(name) for name in _TRY_FIELDS})
        rank = (not layout.info.get("recall_target_met", True), products)
        if best is not None and rank >= best[1]:
            break  # the doubled lists did not pay: keep the previous ones
        best = (layout, rank)
        lists = more_lists(lists, num_rows, num_keys, products) if adaptive else None
    assert best is not None
    layout = best[0]
    layout.info["lists_s"] = round(keys_s + sum(step["lists_s"] for step in tries), 3)
    if "calibration_s" in layout.info:
        layout.info["calibration_s"] = round(sum(step["calibration_s"] for step in tries), 3)
    if adaptive:
        layout.info["nlist_tries"] = tries
    return layout, key_t


#: What ``info["nlist_tries"]`` records of each list count :func:`ivf_layout` tried.
_TRY_FIELDS = ("nlist", "nprobe", "calibrated_recall", "searched_fraction", "lists_s", "calibration_s")


def _calibrated_layout(
    rows: Any,
    key_t: torch.Tensor,
    k: int,
    lists: int,
    nprobe: int | None,
    calibration: dict[str, Any],
    exclude_self: bool,
    normalize: bool,
    seed: int,
    split: WorkSplit,
) -> IvfLayout:
    """The layout of ``lists`` centroids at ``nprobe``, or calibrated to ``calibration["target"]``; its
    ``info`` holds the seconds of this list count alone and its ``searched_fraction``."""
    started = time.perf_counter()
    groups, key_lists = _lists_of(rows, key_t, lists, normalize, key_t.device, seed, split)
    info: dict[str, Any] = {"index": "ivf_torch", "nlist": len(groups.probe_order)}
    info["lists_s"] = round(time.perf_counter() - started, 3)
    target = calibration["target"]
    if nprobe is None and target is not None:
        started = time.perf_counter()
        search = dict(groups=groups, keys=key_lists, exclude_self=exclude_self, device=key_t.device,
                      normalize=normalize, split=split)  # fmt: skip
        nprobe, trace = _calibrate(
            rows, key_t, k, float(target), calibration["columns"], calibration["sample"], seed, search,
            calibration["budget"],
        )  # fmt: skip
        record_calibration(info, nprobe, trace, float(target), calibration["budget"], "window recall")
        info["calibration_s"] = round(time.perf_counter() - started, 3)
    at_least = k + 1 if exclude_self else k
    layout = finish_layout(groups, key_lists, nprobe, info, at_least)
    info["searched_fraction"] = round(groups.searched_fraction(layout.nprobe, key_lists, at_least), 4)
    return layout


def check_layout_options(
    nlist: int | None, nprobe: int | None, recall_target: float | None, max_searched_fraction: float | None
) -> None:
    """ConfigError for an ``nlist`` / ``nprobe`` that is not a positive integer, a target or budget off (0, 1]."""
    for name, value in (("nlist", nlist), ("nprobe", nprobe)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1
        ):
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if recall_target is not None and not 0.0 < float(recall_target) <= 1.0:
        raise ConfigError(f"recall_target must lie in (0, 1], got {recall_target!r}")
    if max_searched_fraction is not None and not 0.0 < float(max_searched_fraction) <= 1.0:
        raise ConfigError(f"max_searched_fraction must lie in (0, 1], got {max_searched_fraction!r}")


def grouped_lists(
    rows: Any,
    keys: Any,
    normalize: bool,
    nlist: int | None,
    device: torch.device,
    seed: int,
    split: WorkSplit,
) -> tuple[torch.Tensor, _Groups, _Buckets]:
    """The uncalibrated part of a layout: ``(key_t, groups, key_lists)`` (the keys as :func:`ivf_keys` makes
    them, the rows grouped by nearest centroid with their probe order, the keys by list); the k-means trains
    on ``_TRAIN_PER_LIST`` sampled keys per list."""
    key_t = ivf_keys(keys, device, normalize)
    lists = int(min(nlist or auto_lists(len(key_t)), len(key_t)))
    return (key_t, *_lists_of(rows, key_t, lists, normalize, device, seed, split))


def _lists_of(
    rows: Any, key_t: torch.Tensor, lists: int, normalize: bool, device: torch.device, seed: int,
    split: WorkSplit,
) -> tuple[_Groups, _Buckets]:  # fmt: skip
    """``(groups, key_lists)`` of :func:`grouped_lists` for ``lists`` centroids trained on ``key_t``."""
    centroids = _train_centroids(key_t, lists, seed, split)
    key_lists = _Buckets(_assign(lambda lo, hi: key_t[lo:hi], len(key_t), centroids, device, split), lists)
    return _Groups.of_rows(rows, centroids, device, normalize, split), key_lists


def record_calibration(
    info: dict[str, Any],
    nprobe: int,
    trace: list[tuple[int, float]],
    target: float,
    budget: float | None,
    measure: str,
) -> None:
    """Put a calibration's outcome in ``info`` (``calibration``, ``calibrated_recall``, ``recall_target_met``)
    and warn when a ``budget`` kept the target out of reach."""
    reached = dict(trace).get(nprobe)
    info.update(
        calibration=trace, calibrated_recall=reached, recall_target_met=reached is None or reached >= target
    )
    if not info["recall_target_met"]:
        warnings.warn(
            f"ivf_torch: {measure} {reached:.3f} at nprobe {nprobe} of {info['nlist']}, below the target "
            f"{target} that max_searched_fraction={budget} leaves out of reach",
            stacklevel=4,
        )


def finish_layout(
    groups: _Groups, key_lists: _Buckets, nprobe: int | None, info: dict[str, Any], at_least: int
) -> IvfLayout:
    """The :class:`IvfLayout` at ``nprobe`` (8 when None), with ``info["exact_fallback"]`` set where the
    search would compute more than ``_EXACT_ABOVE`` of the products."""
    nprobe = int(min(nprobe or 8, len(groups.probe_order)))
    info["nprobe"] = nprobe
    info["exact_fallback"] = groups.searched_fraction(nprobe, key_lists, at_least) > _EXACT_ABOVE
    return IvfLayout(key_lists.assignment, groups.assignment, groups.probe_order, nprobe, info)


def ivf_keys(keys: Any, device: torch.device, normalize: bool) -> torch.Tensor:
    """(N_keys, d) fp32 keys on ``device``, L2-normalised when ``normalize``: what :func:`search_groups` takes.

    Every rank that searches groups of one :class:`IvfLayout` builds its keys with this, so all hold the same
    bits as the rank that built the layout.
    """
    key_t = as_tensor(keys, device)
    return torch.nn.functional.normalize(key_t, dim=1) if normalize else key_t


def _sample_pools(
    rows: Any, key_t: torch.Tensor, ids: np.ndarray, pool: int, exclude_self: bool, normalize: bool
) -> np.ndarray:
    """(S, pool) ids of each sampled row's ``pool`` best keys, exact fp32, best first, ties by key id."""
    out = np.empty((len(ids), pool), dtype=np.int64)
    buffer = ScoreBuffer()
    for lo in range(0, len(ids), _CALIBRATION_ROWS):
        chunk = ids[lo : lo + _CALIBRATION_ROWS]
        block = block_scores(_rows_tensor(rows, chunk, key_t.device, normalize), key_t, buffer)
        if exclude_self:
            block[
                torch.arange(len(chunk), device=key_t.device), torch.as_tensor(chunk, device=key_t.device)
            ] = float("-inf")
        out[lo : lo + len(chunk)] = select_topk(block, pool)[1].cpu().numpy()
    return out


def _calibrate(
    rows: Any,
    key_t: torch.Tensor,
    k: int,
    target: float,
    columns: tuple[int, int] | None,
    sample: int,
    seed: int,
    search: dict[str, Any],
    budget: float | None = None,
) -> tuple[int, list[tuple[int, float]]]:
    """Smallest ``nprobe`` on :func:`probe_ladder` whose recall on sampled rows reaches ``target``.

    Each sampled row's answer at a given ``nprobe`` is what the full search gives it: the first k of its
    group's probed keys in the order (score desc, key id asc). One exact pass keeps every sampled row's best
    ``pool`` keys (≥ 16,384); when at least k of them lie in the probed lists those are the answer (no key
    outside the pool scores higher), otherwise the row is re-scored against its probed keys. So each ladder
    step costs O(S · pool), not O(S · P · N_keys / L · d). The sampled rows are blocks of
    ``_CALIBRATION_ROWS`` (each block's pools stay on the rank of ``search["split"]`` that computed them;
    only its answers travel). Returns the choice and the trace (:func:`climb_ladder`).
    """
    groups, keys, exclude_self = search["groups"], search["keys"], search["exclude_self"]
    split: WorkSplit = search["split"]
    num_rows, num_keys = len(rows), len(key_t)
    ids = np.sort(np.random.default_rng([int(seed), 0xCA1]).permutation(num_rows)[: min(sample, num_rows)])
    search_k = k + 1 if exclude_self else k
    pool = min(num_keys, max(_CALIBRATION_POOL, 4 * search_k))
    blocks: dict[int, _SampledRows] = {}

    def sampled(lo: int, hi: int) -> _SampledRows:
        if lo not in blocks:
            blocks[lo] = _SampledRows(rows, key_t, ids[lo:hi], pool, search)
        return blocks[lo]

    exact = split.blocks(lambda lo, hi: sampled(lo, hi).pooled[:, :k], len(ids), _CALIBRATION_ROWS)
    lo, hi = columns or (0, k)

    def recall(value: int) -> float:
        found = split.blocks(
            lambda a, b: sampled(a, b).answer(value, k, search_k), len(ids), _CALIBRATION_ROWS
        )
        return _overlap(found[:, lo:hi], exact[:, lo:hi])

    return climb_ladder(groups, keys, search_k, target, budget, recall)


def climb_ladder(
    groups: _Groups,
    keys: _Buckets,
    at_least: int,
    target: float,
    budget: float | None,
    recall: Callable[[int], float],
) -> tuple[int, list[tuple[int, float]]]:
    """The first step of :func:`probe_ladder` whose ``recall(nprobe)`` reaches ``target``, and the trace.

    When none does before: with a ``budget`` below ``_EXACT_ABOVE``, the last step within it (the first
    step, measured, when none is); otherwise the first step that would search more than ``_EXACT_ABOVE``
    of the products (unmeasured: the exact search, which is cheaper there, follows).
    """
    trace: list[tuple[int, float]] = []
    ladder = probe_ladder(len(groups.probe_order))
    for value in ladder:
        fraction = groups.searched_fraction(value, keys, at_least)
        if budget is not None and budget < _EXACT_ABOVE and fraction > budget and trace:
            return trace[-1][0], trace
        if fraction > _EXACT_ABOVE:  # the exact search is cheaper
            return int(value), trace
        trace.append((int(value), round(recall(int(value)), 4)))
        if trace[-1][1] >= target:
            return int(value), trace
    return int(ladder[-1]), trace


class _SampledRows:
    """A block of the calibration's sampled rows: their exact best ``pool`` keys, and their answer at an
    ``nprobe`` as the grouped search would give it."""

    def __init__(
        self, rows: Any, key_t: torch.Tensor, ids: np.ndarray, pool: int, search: dict[str, Any]
    ) -> None:
        self.ids, self.key_t, self.keys, self.search = ids, key_t, search["keys"], search
        self.exclude_self = search["exclude_self"]
        self.pooled = _sample_pools(rows, key_t, ids, pool, self.exclude_self, search["normalize"])
        self.pooled_lists = self.keys.assignment[self.pooled]
        if self.exclude_self:  # the row's own key, scored -inf, is never an answer
            self.pooled_lists = np.where(self.pooled == ids[:, None], -1, self.pooled_lists)
        self.row_t = _rows_tensor(rows, ids, search["device"], search["normalize"])

    def answer(self, nprobe: int, k: int, search_k: int) -> np.ndarray:
        """(rows, k) int64: the top k of each row among its group's probed keys at ``nprobe``."""
        groups: _Groups = self.search["groups"]
        found = np.empty((len(self.ids), k), dtype=np.int64)
        for position, row in enumerate(self.ids):
            lists = groups.probed(int(groups.assignment[row]), nprobe, self.keys, search_k)
            eligible = np.flatnonzero(np.isin(self.pooled_lists[position], lists))[:k]
            if len(eligible) == k:
                found[position] = self.pooled[position, eligible]
                continue
            candidates = self.keys.members(lists)
            columns = torch.as_tensor(candidates, device=self.key_t.device)
            scores = self.key_t.index_select(0, columns) @ self.row_t[position]
            chosen = candidates[select_topk(scores[None].float(), search_k)[1][0].cpu().numpy()]
            if self.exclude_self:
                chosen = _drop_self(chosen[None], chosen[None], np.array([row]), k)[0][0]
            found[position] = chosen
        return found
