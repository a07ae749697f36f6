"""Grouped IVF threshold graphs: GCBS's graph at matmul speed, exact inside the probed lists.

:func:`hardbatch.graph.threshold.threshold_graph` compares every row with every key (O(N² · d)); faiss's
range search (:func:`~hardbatch.graph.threshold.ivf_threshold_graph`) compares each row with ``nprobe``
lists only, but one query at a time. This module searches the rows in groups instead, as
:mod:`hardbatch.graph.ivf` does for kNN: rows with the same nearest centroid form a group, the group probes
the ``nprobe`` lists nearest to its mean row, and the group × probed-keys block is one matmul whose entries
above the threshold are the edges (fp32, or bf16 with fp32 re-scoring of every entry within the rounding
bound of the threshold, so an edge is kept on its fp32 score either way). Within the probed keys the graph is
exact; what it misses is the edges to keys in unprobed lists, and that is measured: with ``recall_target``
(default 0.95) ``nprobe`` is the smallest on the ladder (×√2 steps) whose **edge recall** (edges found /
edges of the exact graph) over ``calibration_sample`` sampled rows reaches the target.

Cost, with L lists (≈ √N_keys), P = ``nprobe``: the layout's k-means (on 256 sampled keys per list,
O(20 · 256 L · L · d)), assignment and group means as in :mod:`hardbatch.graph.ivf`; calibration O(S · N_keys · d) once for the sampled rows' exact edges, then
O(S · edges per row) per ladder step; search O(N_rows · P · N_keys / L · d) at matmul speed
(``info["searched_fraction"]`` ≈ P / L of the exact pass). Memory: the keys resident (N_keys · d fp32, plus a
bf16 copy in bf16 mode), one group's gathered keys (P · N_keys / L · d) and score block (chunked to
256 MiB of scores), and the edges, O(nnz).

Over ranks, :func:`threshold_layout` takes a :class:`~hardbatch.distributed.WorkSplit` (every rank gets
the one-process layout) and :func:`threshold_groups` searches any subset of the groups: a group's edges
depend on the layout only.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from hardbatch.device import resolve_device
from hardbatch.distributed import WorkSplit
from hardbatch.graph.ivf import (
    IvfLayout,
    _Buckets,
    _Groups,
    _rows_tensor,
    check_layout_options,
    climb_ladder,
    finish_layout,
    grouped_lists,
    record_calibration,
)
from hardbatch.graph.knn import _auto_chunk, check_aligned
from hardbatch.graph.precision import bf16_score_error_bound, resolve_precision
from hardbatch.graph.similarity import ScoreBuffer, block_scores
from hardbatch.graph.threshold import _bf16_hits, _check_density, threshold_graph
from hardbatch.progress import progress

__all__ = ["edge_coordinates_to_csr", "ivf_torch_threshold_graph", "threshold_groups", "threshold_layout"]

#: A group's block runs in bf16 only with at least this many candidate keys: below it the row cast and the
#: widened comparison cost more than bf16 saves. Measured (256 rows, d = 384, AMD Zen 4, 2 threads) bf16 time /
#: fp32 time: 2,000 keys 1.7, 3,000-6,000 about 1.0, 8,000 0.69, 32,000 0.78.
_BF16_MIN_CANDIDATES = 8192

# The k-means of this layout trains on hardbatch.graph.ivf._TRAIN_PER_LIST (256) keys per list, as the kNN
# layout's: a threshold graph's edges are a row's very nearest keys, so the search is tiny and the lists'
# quality decides the recall. Measured at 100k × 384, 2,000 topics of 50 (bench_gcbs.py's data), 316 lists,
# target degree 32: edge recall at nprobe 1 (0.33 % of the products) 0.866 with 64 keys per list, 0.963 with
# 128, 0.994 with 256; set-up 2.2 / 3.7 / 7.0 s (AMD Zen 4, 2 threads).

#: Sampled rows per calibration block (the unit a WorkSplit deals to the ranks).
_CALIBRATION_ROWS = 64


def threshold_layout(
    rows: np.ndarray | torch.Tensor,
    keys: np.ndarray | torch.Tensor,
    threshold: float,
    *,
    drop_diagonal: bool = False,
    normalize: bool = False,
    nlist: int | None = None,
    nprobe: int | None = None,
    recall_target: float | None = 0.95,
    calibration_sample: int = 500,
    max_searched_fraction: float | None = None,
    device: str | torch.device | None = "auto",
    seed: int = 0,
    split: WorkSplit | None = None,
) -> tuple[IvfLayout, torch.Tensor]:
    """The set-up of :func:`ivf_torch_threshold_graph`: lists, groups and the ``nprobe`` of the edge recall.

    Arguments as in :func:`ivf_torch_threshold_graph`; ``split`` shares the k-means, the assignment, the
    group means and the calibration's sampled rows among ranks that all call this with the same inputs.

    Returns:
        ``(layout, key_t)``: the :class:`~hardbatch.graph.ivf.IvfLayout` (``info["exact_fallback"]`` where
        the search would compute more than half the products) and the (N_keys, d) fp32 keys on the device,
        normalised when ``normalize``.
    """
    if drop_diagonal:
        check_aligned("drop_diagonal", len(rows), len(keys))
    check_layout_options(nlist, nprobe, recall_target, max_searched_fraction)
    split = split or WorkSplit()
    started = time.perf_counter()
    key_t, groups, key_lists = grouped_lists(
        rows, keys, normalize, nlist, resolve_device(device), seed, split
    )
    info: dict[str, Any] = {"index": "ivf_torch", "nlist": len(groups.probe_order)}
    info["lists_s"] = round(time.perf_counter() - started, 3)
    if nprobe is None and recall_target is not None:
        started = time.perf_counter()
        nprobe, trace, edges = _calibrate_edges(
            rows, key_t, threshold, groups, key_lists, float(recall_target), calibration_sample,
            max_searched_fraction, drop_diagonal, normalize, seed, split,
        )  # fmt: skip
        record_calibration(info, nprobe, trace, float(recall_target), max_searched_fraction, "edge recall")
        info.update(calibration_edges=edges, calibration_s=round(time.perf_counter() - started, 3))
    return finish_layout(groups, key_lists, nprobe, info, 0), key_t


def _calibrate_edges(
    rows: Any,
    key_t: torch.Tensor,
    threshold: float,
    groups: _Groups,
    key_lists: _Buckets,
    target: float,
    sample: int,
    budget: float | None,
    drop_diagonal: bool,
    normalize: bool,
    seed: int,
    split: WorkSplit,
) -> tuple[int, list[tuple[int, float]], int]:
    """``(nprobe, trace, edges)``: the first ladder step whose edge recall on ``sample`` sampled rows reaches
    ``target`` (:func:`~hardbatch.graph.ivf.climb_ladder`), and the sampled rows' exact edge count.

    The sampled rows' exact edges are found once, in blocks of ``_CALIBRATION_ROWS`` dealt by ``split``
    (each block's edge lists stay on its rank); a ladder step then only counts, per row, the edges whose key
    lies in its group's probed lists: O(S · edges per row), no products. No sampled edge: recall 1.0.
    """
    chosen = np.random.default_rng([int(seed), 0xED6]).permutation(len(rows))[: min(sample, len(rows))]
    ids = np.sort(chosen)
    blocks: dict[int, _SampledEdges] = {}

    def sampled(lo: int, hi: int) -> _SampledEdges:
        if lo not in blocks:
            blocks[lo] = _SampledEdges(rows, key_t, ids[lo:hi], threshold, drop_diagonal, normalize,
                                       key_lists.assignment)  # fmt: skip
        return blocks[lo]

    total = int(split.blocks(lambda lo, hi: sampled(lo, hi).total(), len(ids), _CALIBRATION_ROWS).sum())

    def recall(value: int) -> float:
        found = split.blocks(
            lambda lo, hi: sampled(lo, hi).found(groups, value, key_lists), len(ids), _CALIBRATION_ROWS
        )
        return float(found.sum() / total) if total else 1.0

    nprobe, trace = climb_ladder(groups, key_lists, 0, target, budget, recall)
    return nprobe, trace, total


class _SampledEdges:
    """A block of calibration rows: the list of every key above the threshold (their exact fp32 edges)."""

    def __init__(
        self,
        rows: Any,
        key_t: torch.Tensor,
        ids: np.ndarray,
        threshold: float,
        drop_diagonal: bool,
        normalize: bool,
        key_lists: np.ndarray,
    ) -> None:
        self.ids = ids
        row_t = _rows_tensor(rows, ids, key_t.device, normalize)
        hits = torch.nonzero(block_scores(row_t, key_t) > threshold).cpu().numpy()
        if drop_diagonal:
            hits = hits[ids[hits[:, 0]] != hits[:, 1]]
        self.hit_rows = hits[:, 0]
        self.hit_lists = key_lists[hits[:, 1]]

    def total(self) -> np.ndarray:
        """(rows,) int64: exact edges of every sampled row."""
        return np.bincount(self.hit_rows, minlength=len(self.ids)).astype(np.int64)

    def found(self, groups: _Groups, nprobe: int, keys: _Buckets) -> np.ndarray:
        """(rows,) int64: the edges of every sampled row whose key lies in its group's first ``nprobe`` lists."""
        out = np.zeros(len(self.ids), dtype=np.int64)
        for position, row in enumerate(self.ids):
            mine = self.hit_lists[self.hit_rows == position]
            if len(mine):
                probed = groups.probed(int(groups.assignment[row]), nprobe, keys, 0)
                out[position] = int(np.isin(mine, probed).sum())
        return out


def threshold_groups(
    rows: Any,
    key_t: torch.Tensor,
    threshold: float,
    layout: IvfLayout,
    groups: np.ndarray | None = None,
    *,
    drop_diagonal: bool = False,
    precision: str = "fp32",
    normalize: bool = False,
    max_avg_degree: float | None = None,
    show_progress: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """The edges of the rows of ``groups`` (None: every non-empty group) above ``threshold``, by ``layout``.

    Args:
        rows: (N_rows, d) float array; only the rows of ``groups`` are read, one group at a time.
        key_t: (N_keys, d) fp32 keys on the search device (as :func:`threshold_layout` returns them).
        threshold: keep entries strictly above it.
        layout: from :func:`threshold_layout` (on any rank).
        groups: (G,) group ids to search.
        drop_diagonal: leave out (i, i) (rows and keys aligned).
        precision: "fp32" or "bf16" (resolved): speed only, every edge is decided on its fp32 score (bf16
            blocks only for groups with at least ``_BF16_MIN_CANDIDATES`` probed keys).
        normalize: L2-normalise the rows read (the keys are normalised already).
        max_avg_degree: raise :class:`~hardbatch.graph.threshold.DenseGraphError` once the edges found
            exceed this many per row of ``rows`` (None: no cap).
        show_progress: progress bar over the groups.

    Returns:
        ``(row_idx, col_idx, counts)``: (E,) int32 coordinates grouped by group, row-major with ascending
        columns inside each group, and ``counts``: ``products`` computed, ``bf16_groups`` (groups whose
        block ran in bf16; the bf16 copy of the keys, 2 · N_keys · d bytes, is made only when one does).
    """
    row_buckets, keys = layout.buckets()
    if groups is None:
        groups = np.flatnonzero(np.diff(row_buckets.rows.bounds))
    key_low: torch.Tensor | None = None  # the bf16 copy of the keys, made for the first group wide enough
    bound = 0.0
    if precision == "bf16" and len(key_t):
        bound = bf16_score_error_bound(key_t.shape[1]) * float(key_t.norm(dim=1).max())
    buffer = ScoreBuffer()
    row_parts: list[np.ndarray] = []
    col_parts: list[np.ndarray] = []
    edges = 0
    counts = {"products": 0, "bf16_groups": 0}
    max_edges = None if max_avg_degree is None else int(max_avg_degree * len(rows))
    label = f"threshold graph (ivf_torch, {precision}, nprobe {layout.nprobe})"
    for group in progress(groups, label, show=show_progress):
        ids = row_buckets.rows_of(int(group))
        if len(ids) == 0:
            continue
        candidates = keys.members(row_buckets.probed(int(group), layout.nprobe, keys, 0))
        columns = torch.as_tensor(candidates, device=key_t.device)
        low = precision == "bf16" and len(candidates) >= _BF16_MIN_CANDIDATES
        if low and key_low is None:
            key_low = key_t.to(torch.bfloat16)
        block_keys = (key_low if low else key_t).index_select(0, columns)
        counts["bf16_groups"] += int(low)
        chunk = _auto_chunk(len(candidates))
        for lo in range(0, len(ids), chunk):
            part = ids[lo : lo + chunk]
            row_t = _rows_tensor(rows, part, key_t.device, normalize)
            if not low:
                hits = torch.nonzero(block_scores(row_t, block_keys, buffer) > threshold)
            else:
                hits = _bf16_hits(row_t, key_t, block_keys, bound, threshold, buffer, key_ids=columns)
            hits = hits.cpu().numpy()
            row_idx, col_idx = part[hits[:, 0]], candidates[hits[:, 1]]
            if drop_diagonal:
                keep = row_idx != col_idx
                row_idx, col_idx = row_idx[keep], col_idx[keep]
            edges += len(col_idx)
            if max_avg_degree is not None:
                _check_density(edges, max_edges, threshold, max_avg_degree)
            row_parts.append(row_idx.astype(np.int32))
            col_parts.append(col_idx.astype(np.int32))
        counts["products"] += len(ids) * len(candidates)
    if not row_parts:
        return np.empty(0, np.int32), np.empty(0, np.int32), counts
    return np.concatenate(row_parts), np.concatenate(col_parts), counts


def edge_coordinates_to_csr(row_idx: np.ndarray, col_idx: np.ndarray, shape: tuple[int, int]) -> sp.csr_array:
    """(N_rows, N_keys) int8 CSR of the edges, from coordinates whose columns ascend within each row's run
    (as :func:`threshold_groups` gives them, in any order of groups): a stable sort on the row keeps them so."""
    order = np.argsort(row_idx, kind="stable")
    col_idx = col_idx[order]
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(row_idx, minlength=shape[0]), out=indptr[1:])
    return sp.csr_array((np.ones(len(col_idx), dtype=np.int8), col_idx, indptr), shape=shape)


def ivf_torch_threshold_graph(
    rows: np.ndarray | torch.Tensor,
    keys: np.ndarray | torch.Tensor,
    threshold: float,
    *,
    drop_diagonal: bool = False,
    normalize: bool = True,
    nlist: int | None = None,
    nprobe: int | None = None,
    recall_target: float | None = 0.95,
    calibration_sample: int = 500,
    max_searched_fraction: float | None = None,
    max_avg_degree: float = 1024.0,
    precision: str = "auto",
    device: str | torch.device | None = "auto",
    seed: int = 0,
    show_progress: bool | None = None,
) -> tuple[sp.csr_array, dict[str, Any]]:
    """Approximate :func:`~hardbatch.graph.threshold.threshold_graph` by a grouped IVF search (no faiss).

    Args:
        rows: (N_rows, d) float array (numpy, memory-mapped numpy or torch); read one group at a time.
        keys: (N_keys, d) float array, held on ``device`` in fp32.
        threshold: keep entries strictly above this value (cosine similarity when ``normalize``).
        drop_diagonal: leave out (i, i) entries (rows and keys aligned: a pair's own positive).
        normalize: cosine similarity (L2-normalise both sides, row by row).
        nlist: lists (default :func:`~hardbatch.graph.ivf.auto_lists`, ≈ √N_keys).
        nprobe: lists each group searches (default: calibrated to ``recall_target``; 8 without a target).
        recall_target: the edge recall ``nprobe`` is calibrated to on ``calibration_sample`` rows; None: none.
        calibration_sample: rows whose exact edges the calibration measures (O(sample · N_keys · d), once).
        max_searched_fraction: never pick an ``nprobe`` that computes more than this fraction of the
            products (a time budget; ``info["recall_target_met"]`` says whether the target was reached).
        max_avg_degree: stop with a :class:`~hardbatch.graph.threshold.DenseGraphError` past this many edges
            per row.
        precision: "auto" (bf16 where fast), "fp32" or "bf16": speed only, the edges are decided in fp32.
        device: "auto" (CUDA when available) or a torch device.
        seed: k-means seed and calibration sample.
        show_progress: progress bar over the groups.

    Returns:
        ``(graph, info)``: the (N_rows, N_keys) ``scipy.sparse.csr_array`` of int8 ones, column indices sorted
        within each row, a subset of :func:`~hardbatch.graph.threshold.threshold_graph`'s edges (all of them
        with ``nprobe = nlist``); ``info`` holds ``nlist``, ``nprobe``, the ``calibration`` trace
        ``[(nprobe, edge recall), ...]``, ``calibrated_recall``, ``searched_fraction``, ``precision``,
        ``exact_fallback`` (past half the products the exact pass runs instead: it is cheaper there) and the
        seconds of the lists (``lists_s``: k-means and assignment), the calibration and the search.

    Raises:
        ConfigError: ``nlist`` / ``nprobe`` not positive integers, a target or budget outside (0, 1].
        DenseGraphError: a graph denser than ``max_avg_degree``.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
        >>> graph, info = ivf_torch_threshold_graph(
        ...     x, x, 0.8, nlist=10, nprobe=3, device="cpu", show_progress=False
        ... )
        >>> exact = threshold_graph(x, x, 0.8, device="cpu")
        >>> info["nprobe"], graph.multiply(exact).nnz == graph.nnz, graph.nnz <= exact.nnz
        (3, True, True)
    """
    dev = resolve_device(device)
    layout, key_t = threshold_layout(
        rows, keys, threshold, drop_diagonal=drop_diagonal, normalize=normalize, nlist=nlist, nprobe=nprobe,
        recall_target=recall_target, calibration_sample=calibration_sample,
        max_searched_fraction=max_searched_fraction, device=dev, seed=seed,
    )  # fmt: skip
    info = {**layout.info, "precision": resolve_precision(precision, dev)}
    pairs = max(1, len(rows) * len(keys))
    started = time.perf_counter()
    if info["exact_fallback"]:
        del key_t
        graph = threshold_graph(
            rows, keys, threshold, device=dev, normalize=normalize, drop_diagonal=drop_diagonal,
            max_avg_degree=max_avg_degree, precision=info["precision"], show_progress=show_progress,
        )  # fmt: skip
        return graph, {**info, "searched_fraction": 1.0, "search_s": round(time.perf_counter() - started, 3)}
    row_idx, col_idx, counts = threshold_groups(
        rows, key_t, threshold, layout, drop_diagonal=drop_diagonal, precision=info["precision"],
        normalize=normalize, max_avg_degree=max_avg_degree, show_progress=show_progress,
    )  # fmt: skip
    graph = edge_coordinates_to_csr(row_idx, col_idx, (len(rows), len(keys)))
    info.update(searched_fraction=round(counts["products"] / pairs, 4), bf16_groups=counts["bf16_groups"],
                search_s=round(time.perf_counter() - started, 3))  # fmt: skip
    return graph, info
