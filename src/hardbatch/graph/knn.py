"""k-nearest-neighbour search by inner product: exact (chunked torch) or approximate (faiss).

Every hardbatch stage that needs "the k most similar keys of each row" (B3's teacher ranking, GCBS'
thresholded graph, hard-negative mining) goes through :func:`knn`. ``rows`` and ``keys`` may be different
matrices (B3 ranks *positives* against *queries*); with ``exclude_self=True`` they must be aligned (row i and
key i describe the same example) and key i is never returned for row i.

Backends:

* ``"exact"`` (default): row blocks × all keys on the best available device, selected by
  :func:`hardbatch.graph.topk.select_topk` (the tie rule, group-pruned). With ``precision="bf16"`` (chosen
  by ``"auto"`` where bf16 is fast, :mod:`hardbatch.graph.precision`) blocks are scored in bf16 and
  ``k + margin`` candidates re-scored in fp32 with a per-row proof of exactness. Time O(N_rows · N_keys · d),
  memory O(N_keys · d) + O(chunk · N_keys) for the block + O(N_rows · k) for the result; with
  ``key_block_size=B`` the keys are read B at a time (once) and merged into running top-k lists by the same
  tie rule, memory O(B · d) + O(chunk · B) + O(N_rows · k).
* ``"hnsw"``: faiss ``IndexHNSWFlat`` (inner product). Build O(N_keys · M · log N_keys), search
  O(N_rows · ef · log N_keys); memory O(N_keys · (d + M)).
* ``"ivf"``: faiss ``IndexIVFFlat`` (inner product), ``nlist`` ≈ 4·sqrt(N) lists, ``nprobe`` probed per
  query (or calibrated to a recall target). Train O(sample · nlist · d), search
  O(N_rows · nprobe · N_keys / nlist · d), one query at a time (measured ~1/40 of matmul speed at 1M).
* ``"ivf_torch"``: :func:`hardbatch.graph.ivf.knn_ivf`, the same search shape for *every* row: rows grouped
  by nearest centroid, each group one matmul against its ``nprobe`` lists (bf16 where fast), exact inside
  them, ``nprobe`` calibrated to a recall target. The backend for mining at 1M and beyond.

Approximate backends miss some true neighbours; :func:`knn_recall` measures recall@k against the exact
answer on a random sample of rows so the loss of quality is reported, never guessed.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from hardbatch.device import resolve_device
from hardbatch.errors import ConfigError
from hardbatch.graph.budget import (
    check_key_block_options,
    key_shape,
    parse_memory_size,
    resolve_key_block_size,
)
from hardbatch.graph.precision import resolve_precision
from hardbatch.graph.similarity import ScoreBuffer, as_tensor, block_scores, take_rows
from hardbatch.graph.topk import DEFAULT_BLOCK_BYTES, merge_topk, select_topk, topk_with_ties
from hardbatch.progress import progress
from hardbatch.validation import check_chunk_size

__all__ = [
    "KnnBackend",
    "KnnResult",
    "auto_ivf_lists",
    "build_ivf_index",
    "exact_rows",
    "knn",
    "knn_exact",
    "knn_faiss",
    "knn_key_block",
    "knn_recall",
    "knn_working_set",
    "recall_report",
]

KnnBackend = Literal["exact", "hnsw", "ivf", "ivf_torch"]

#: Extra bf16 candidates per row beyond k before the fp32 re-scoring; rows whose proof fails try again with
#: ``_WIDEN`` times as many. At 100k × 384 (k = 131, AMD Zen 5) the proofs needed 26 / 43 / 62 extra
#: candidates (median / 99th percentile / max) on ``clustered`` data and 15 / 29 / 37 on ``lowdim``. Four
#: 671-row blocks against 100k keys, with the second try (ms; fp32 matmul alone 1,196): margin 128: 620 / 644
#: (clustered / lowdim), 64: 629 / 568, 48: 556 / 537 (8 / 1 rows widened), 32: 683 / 540 (570 / 30
#: widened), 24: 903 / 569; no row needed the fp32 redo. (Before the second try a failed row was redone in
#: fp32, a whole row's matmul: 48 then cost 150 ms per block against 140 at 64.)
_DEFAULT_MARGIN = 48
_WIDEN = 4

#: Rows per fp32 matmul of the re-done rows: at least this many, so that their bits do not depend on how many
#: failed together (MKL's per-element sum order was measured independent of the block shape from 16 rows on).
_STABLE_ROWS = 16


@dataclass
class KnnResult:
    """Neighbours of every row, best first.

    Attributes:
        indices: (N_rows, k) int32 key indices, sorted by decreasing score.
        scores: (N_rows, k) float32 inner products matching ``indices``.
        info: how the search ran (precision, candidate margin, rows re-done in fp32, nprobe/ef chosen...).
    """

    indices: np.ndarray
    scores: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])


def check_k(k: int, num_keys: int, exclude_self: bool) -> None:
    """ConfigError unless ``k`` is a positive integer no larger than the keys a row may return."""
    available = num_keys - 1 if exclude_self else num_keys
    if not isinstance(k, int | np.integer) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    if k > available:
        raise ConfigError(
            f"k={k} neighbours requested but only {available} keys are available"
            + (" (excluding each row itself)" if exclude_self else "")
        )


def check_aligned(option: str, num_rows: int, num_keys: int) -> None:
    """ConfigError unless rows and keys are aligned (row i and key i one pair), as ``option`` needs."""
    if num_rows != num_keys:
        raise ConfigError(f"{option} needs aligned rows and keys, got {num_rows} rows and {num_keys} keys")


def _auto_chunk(num_keys: int, block_entries: int = DEFAULT_BLOCK_BYTES // 4) -> int:
    """Rows per block: as many as keep the score block at ``block_entries`` scores (256 MiB of fp32), 16-8192."""
    return int(max(16, min(_MAX_AUTO_CHUNK, block_entries // max(1, num_keys))))


def _budget_block_entries(budget: int, precision: str) -> int:
    """Scores per block of the automatic chunk under a memory budget: at most half the budget, 256 MiB fp32."""
    return int(min(DEFAULT_BLOCK_BYTES // 4, budget // (2 * _BYTES_PER_SCORE[precision])))


def knn_working_set(
    key_block: int,
    dim: int,
    chunk_size: int | None = None,
    precision: str = "fp32",
    block_entries: int = DEFAULT_BLOCK_BYTES // 4,
) -> int:
    """Upper bound in bytes of what :func:`knn_exact` holds with key blocks of ``key_block`` keys.

    With B = ``key_block``, d = ``dim`` and c = ``chunk_size`` (automatic: c·B <= ``block_entries`` scores
    with 16 <= c <= 8192, bounded here by ``min(8192·B, max(16·B, block_entries))`` scores and 8192 rows)::

        keys    8·B·d    (the fp32 block and its normalised copy while it is made)
                + 2·B·d  (its bf16 copy, bf16 mode)
        rows    8·c·d    (a row block and its normalised copy)
        scores  16·c·B   fp32: the block, the selection's temporaries (group maxima, masks, top-k buffers)
                         and what the allocator keeps of the previous block's; measured 5.7-14 bytes per score
                32·c·B   bf16: the bf16 block and its selection, plus the fp32 block of rows redone
                         (measured ~27 bytes per score)
        bf16    + 4 MiB  (the gathered candidate keys of one re-scoring piece)

    Calibrated on a 2-core CPU (peak anonymous memory growth of the search on memory-mapped inputs): 0.3-0.8
    of this bound. The result, 8·N_rows·k bytes (int32 indices and fp32 scores), comes on top.

    Example:
        >>> round(knn_working_set(100_000, 384, 1024) / 2**30, 3)
        1.815
    """
    if chunk_size is None:
        rows, entries = _MAX_AUTO_CHUNK, min(_MAX_AUTO_CHUNK * key_block, max(16 * key_block, block_entries))
    else:
        rows, entries = int(chunk_size), int(chunk_size) * key_block
    bf16 = precision == "bf16"
    total = key_block * dim * (10 if bf16 else 8) + 8 * rows * dim + _BYTES_PER_SCORE[precision] * entries
    return int(total + (_RESCORE_BYTES if bf16 else 0))


#: Largest automatic row chunk.
_MAX_AUTO_CHUNK = 8192
#: Budgeted bytes per score of a block with its selection temporaries (see :func:`knn_working_set`).
_BYTES_PER_SCORE = {"fp32": 16, "bf16": 32}
#: Bytes of gathered candidate keys per re-scoring piece (bf16 mode): cache-sized, so the product reads what
#: the gather just wrote from cache. 1,024 rows × 262 candidates × 384 dims on a 2-core EPYC (32 MiB L3):
#: 64 MiB pieces 375 ms, 16 MiB 209 ms, 4 MiB 192 ms; with ``index_select`` into 3 MiB pieces 135-139 ms.
_RESCORE_BYTES = 4 << 20


def _rescore(row_t: torch.Tensor, key_t: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """(R, c) fp32 products of each row with its own candidate keys, gathered in ~4 MiB pieces."""
    num_rows, width = columns.shape
    out = torch.empty(num_rows, width, dtype=torch.float32, device=row_t.device)
    step = max(1, _RESCORE_BYTES // max(1, width * key_t.shape[1] * 4))
    for lo in range(0, num_rows, step):
        hi = min(lo + step, num_rows)
        gathered = key_t.index_select(0, columns[lo:hi].reshape(-1)).view(hi - lo, width, -1)  # (r, c, d)
        torch.bmm(gathered, row_t[lo:hi, :, None], out=out[lo:hi, :, None])
    return out


def _self_pairs(
    num_rows: int, offset: int, width: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(local rows, block columns) of the rows whose own key, column ``row + offset``, lies in [0, width).

    ``offset`` is the row block's first example minus the key block's first key: every row's own column is
    in range when the block holds all keys; in a key block only a run of rows (possibly none) has it.
    """
    lo, hi = max(0, -offset), min(num_rows, width - offset)
    local = torch.arange(lo, max(lo, hi), device=device)
    return local, local + offset


def _mask_self(block: torch.Tensor, offset: int) -> None:
    local, columns = _self_pairs(block.shape[0], offset, block.shape[1], block.device)
    block[local, columns] = float("-inf")


def _fp32_topk(
    row_t: torch.Tensor,
    key_t: torch.Tensor,
    k: int,
    offset: int,
    exclude_self: bool,
    buffer: ScoreBuffer | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    block = block_scores(row_t, key_t, buffer)
    if exclude_self:
        _mask_self(block, offset)
    return select_topk(block, k)


def _bf16_key_bounds(key_t: torch.Tensor, key_low: torch.Tensor) -> tuple[float, float, float]:
    """(max ||y||, max ||ŷ||, max ||ŷ − y||) over a key block, y fp32 and ŷ its bf16 rounding."""
    norm = low_norm = rounding = 0.0
    for lo in range(0, len(key_t), 16384):  # pieces: no second fp32 copy of the block
        exact, low = key_t[lo : lo + 16384], key_low[lo : lo + 16384].float()
        norm = max(norm, float(exact.norm(dim=1).max()))
        low_norm = max(low_norm, float(low.norm(dim=1).max()))
        rounding = max(rounding, float((low - exact).norm(dim=1).max()))
    return norm, low_norm, rounding


def _bf16_row_error(
    row_t: torch.Tensor, row_low: torch.Tensor, key_bounds: tuple[float, float, float], bound: torch.Tensor
) -> torch.Tensor:
    """(R,) bound on how far any left-out key's fp32 re-scored product lies above the row's ``bound``.

    For a row x, a key y and their bf16 roundings x̂, ŷ, the bf16 matmul returns s̃ = bf16(fl32(x̂·ŷ)), so
    |s̃ − x·y| <= ||x̂||·||ŷ − y|| + ||x̂ − x||·||y|| + γ_d·||x̂||·||ŷ|| + u'·|s̃| (Cauchy–Schwarz on the
    input roundings, the fp32 accumulation, the output rounding; γ_d = d·2⁻²⁴, u' = 2⁻⁸ / (1 − 2⁻⁸)), and the
    fp32 re-scoring adds γ_d·||x||·||y||. A key left out has s̃ <= ``bound``, so its re-scored value is at
    most ``bound`` + this. The actual rounding errors (||x̂ − x|| ≈ 0.0017 for unit vectors at d = 384)
    make it ~3× tighter than the worst case of :func:`~hardbatch.graph.precision.bf16_score_error_bound`
    (0.0043 against 0.0119 on the 100k benchmark data), so fewer candidates need re-scoring.
    """
    key_norm, key_low_norm, key_rounding = key_bounds
    low = row_low.float()
    row_norm, low_norm = row_t.norm(dim=1), low.norm(dim=1)
    row_rounding = (low - row_t).norm(dim=1)
    gamma = row_t.shape[1] * 2.0**-24
    unit = 2.0**-8 / (1 - 2.0**-8)
    inputs = low_norm * key_rounding + row_rounding * key_norm
    sums = gamma * (low_norm * key_low_norm + row_norm * key_norm)
    # 1 % on top covers the rounding of these norms themselves.
    output = unit * torch.where(torch.isfinite(bound), bound.abs(), torch.zeros_like(bound))
    return 1.01 * (inputs + sums + output)


def _bf16_topk(
    row_t: torch.Tensor,
    key_t: torch.Tensor,
    key_low: torch.Tensor,
    key_bounds: tuple[float, float, float],
    k: int,
    margin: int,
    offset: int,
    exclude_self: bool,
    buffer: ScoreBuffer | None = None,
    key_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Exact fp32 top-k of one row block from a bf16 pre-selection: (values, indices, rows widened, redone).

    bf16 scores pick ``k + margin`` candidates per row; those are re-scored in fp32 and ranked by the tie
    rule. Any key left out has a bf16 score <= ``bound`` (the (k + margin + 1)-th bf16 score), hence an fp32
    score <= bound + eps; when that is below the k-th re-scored value, the row's top k equals the fp32 top k.
    Rows where the proof fails (a dense band of scores across the margin) try again with
    ``k + _WIDEN · margin`` candidates from the same bf16 block, and rows that fail that too (a tie run) are
    redone in fp32 (:func:`_fp32_rows`). Each row's path depends on that row alone, never on the rows
    searched before it, so a row gets the same bits in any row block, on any rank (a margin adapted from
    block to block made the re-done rows, and so the last bits of their scores, depend on the chunking).
    ``key_t`` may be one block of the keys: ``offset`` places each row's own column (see :func:`_self_pairs`)
    and ``key_bounds`` (:func:`_bf16_key_bounds`) bound that block's keys, so the proof covers them.
    With ``key_ids`` (B,) the block's keys are rows ``key_ids`` of ``key_t`` (``key_low`` holds just those,
    in that order; bounds over all of ``key_t`` hold for them too): the re-scoring gathers them from
    ``key_t`` directly, so a gathered subset of keys (:mod:`hardbatch.graph.ivf`) needs no fp32 copy.
    Indices are block columns either way.
    """
    num_keys = key_low.shape[0]
    row_low = row_t.to(torch.bfloat16)
    block = row_low @ key_low.T if buffer is None else buffer.product(row_low, key_low)
    if exclude_self:
        _mask_self(block, offset)
    own = torch.arange(offset, offset + len(row_t), device=row_t.device) if exclude_self else None
    scoring = (row_t, row_low, key_t, key_ids, key_bounds, k)
    values, indices, proven = _proven_top(block, *scoring, min(k + margin, num_keys), own)
    widened = (~proven).nonzero().reshape(-1)
    redo = widened[:0]
    if len(widened):
        rows = (row_t[widened], row_low[widened], key_t, key_ids, key_bounds, k)
        wide = min(k + _WIDEN * margin, num_keys)
        again, again_indices, again_proven = _proven_top(
            block[widened], *rows, wide, None if own is None else own[widened]
        )
        values[widened], indices[widened] = again, again_indices
        redo = widened[~again_proven]
    del block
    if len(redo):
        keys = key_t if key_ids is None else key_t.index_select(0, key_ids)
        values[redo], indices[redo] = _fp32_rows(row_t[redo], keys, k, None if own is None else own[redo])
    return values, indices, len(widened), len(redo)


def _proven_top(
    block: torch.Tensor,
    row_t: torch.Tensor,
    row_low: torch.Tensor,
    key_t: torch.Tensor,
    key_ids: torch.Tensor | None,
    key_bounds: tuple[float, float, float],
    k: int,
    width: int,
    own: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values, indices, proven): the fp32 top k among each row's ``width`` best bf16 columns of ``block``,
    and (R,) whether no column left out could have entered it (all True when every column was re-scored)."""
    num_keys = block.shape[1]
    if width < num_keys:
        # Any top set will do (the proof below needs only "left out <= bound"): bf16 ties are everywhere.
        low_values, candidates = select_topk(block, width + 1, ties="any")
        bound = low_values[:, -1].float()
        candidates = candidates[:, :width]
    else:
        candidates = torch.arange(num_keys, device=block.device).expand(len(block), -1)
    # Ascending column order among candidates, so positions break ties like key indices.
    candidates = candidates.sort(dim=1).values
    exact = _rescore(row_t, key_t, candidates if key_ids is None else key_ids[candidates])
    if own is not None:
        exact.masked_fill_(candidates == own[:, None], float("-inf"))
    values, positions = topk_with_ties(exact, k)
    indices = candidates.gather(1, positions)
    if width >= num_keys:  # every column was re-scored in fp32: exact without a proof
        return values, indices, torch.ones(len(block), dtype=torch.bool, device=block.device)
    eps = _bf16_row_error(row_t, row_low, key_bounds, bound)
    return values, indices, bound + eps < values[:, -1]


def _fp32_rows(
    row_t: torch.Tensor, keys: torch.Tensor, k: int, own: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fp32 top k of a few rows over all ``keys`` (``own``: each row's own column, masked).

    The rows are scored in a block of at least :data:`_STABLE_ROWS` (repeating the first): a matmul of fewer
    rows may take another kernel, whose bits would then depend on how many rows failed together.
    """
    count = len(row_t)
    padded = torch.cat([row_t, row_t[:1].expand(_STABLE_ROWS - count, -1)]) if count < _STABLE_ROWS else row_t
    sub = block_scores(padded, keys)[:count]
    if own is not None:
        inside = ((own >= 0) & (own < len(keys))).nonzero().reshape(-1)
        sub[inside, own[inside]] = float("-inf")
    return select_topk(sub, k)


def knn_exact(
    rows: np.ndarray | torch.Tensor,
    keys: np.ndarray | torch.Tensor,
    k: int,
    *,
    exclude_self: bool = False,
    chunk_size: int | None = None,
    key_block_size: int | str | None = None,
    memory_budget: int | str | None = None,
    device: str | torch.device | None = "auto",
    normalize: bool = False,
    precision: str = "auto",
    margin: int | None = None,
    row_offset: int | None = None,
    show_progress: bool | None = None,
) -> KnnResult:
    """Exact top-``k`` keys of every row by inner product, computed block by block.

    With ``precision="bf16"`` (chosen by ``"auto"`` where bf16 matmuls are fast: CUDA, CPUs with AMX; see
    :mod:`hardbatch.graph.precision`) each block is scored in bf16, ``k + margin`` candidates per row are
    re-scored in fp32, and every row carries a proof (a rounding-error bound) that no other key could enter
    its fp32 top k; rows without one try again with four times the margin, then are redone in fp32. A row's
    path depends on that row alone, so its answer has the same bits whatever rows are searched with it.
    The result is the fp32 answer in both precisions.

    **Key blocks** (``key_block_size=B``): the keys are read ``B`` at a time (from whatever array was given:
    a memory-mapped ``.npy`` is never loaded whole) and only one key block is resident. The rows' running top
    k (of the keys before the block) is merged with each (row block, key block) pair's top k, selected as
    above, by :func:`hardbatch.graph.topk.merge_topk` under the same total order (score desc, key index asc)
    with global key indices; ``exclude_self`` masks a row's own key in the one block that holds it, and in
    bf16 mode each block's candidates carry the proof for that block. (Prepending the running values to the
    score block and selecting once would save the merge but copy the whole block: measured +270 MiB at
    N = 20k.) The loop runs key blocks outside and row
    blocks inside, so the keys are read **once** and the rows ``ceil(N_keys / B)`` times: a rank's row shard
    is usually the smaller side, and the other order would read all keys once per row block. The answer is
    the unblocked one (same indices, same fp32 scores) whenever the matmul gives a (row, key) pair the same
    bits in either block shape: always when the products are exact (quantised embeddings, the tie-heavy
    case), and for BLAS kernels whose per-element sum order does not depend on the block width (measured on
    this project's CPUs with MKL: d <= 768 and row blocks of >= 16 rows, key blocks of >= 2 keys; see
    docs/b3.md). Otherwise scores agree to fp32 rounding and only keys whose scores lie within it may swap.

    Args:
        rows: (N_rows, d) float array (numpy, memory-mapped numpy or torch); read ``chunk_size`` rows at a
            time (once per key block).
        keys: (N_keys, d) float array. Without ``key_block_size`` kept resident on ``device`` (fp32, plus a
            bf16 copy in bf16 mode); with it, read ``key_block_size`` rows at a time, once.
        k: neighbours per row (``k <= N_keys``, or ``N_keys - 1`` with ``exclude_self``).
        exclude_self: rows and keys are aligned (``N_rows == N_keys``); never return key i for row i.
        chunk_size: rows per block (default: as many as fit in 256 MiB of fp32 scores against one key block).
        key_block_size: keys resident at a time (None: all of them, one block; "auto": chosen from
            ``memory_budget``).
        memory_budget: bytes (or a size like "4GiB") for the resident key block, row block and score block
            (:func:`knn_working_set`); alone it means ``key_block_size="auto"``: the largest block that fits
            (:func:`hardbatch.graph.budget.key_block_for_budget`), with the automatic ``chunk_size`` filling
            at most half the budget with scores. The result (8·N_rows·k bytes) comes on top.
        device: "auto" (CUDA when available), or any torch device.
        normalize: L2-normalise rows and keys first (cosine similarity).
        precision: "auto", "fp32" or "bf16" (speed only; the answer is the fp32 one).
        margin: bf16 candidates per row beyond ``k`` (default 48; rows whose proof fails retry with 4×).
        row_offset: with ``exclude_self``, ``rows`` is a shard of the aligned rows: row r is example
            ``row_offset + r`` (as one rank of :mod:`hardbatch.mining.distributed` searches). None: the
            rows are all N_keys of them.
        show_progress: progress bar (default: on unless ``HARDBATCH_PROGRESS=0``).

    Returns:
        :class:`KnnResult` with (N_rows, k) int32 indices and float32 scores, best first; equal scores
        are ordered (and, at the k-th place, chosen) by ascending key index, on every device. ``info`` holds
        the precision, the margin, the rows widened and the rows redone in fp32 (counted once per key
        block) and, with key blocks, ``key_block_size`` and ``key_blocks`` (with a budget also
        ``memory_budget`` in bytes and the ``chunk_size`` used).

    Raises:
        ConfigError: ``k`` out of range, misaligned rows with ``exclude_self``, a ``chunk_size``,
            ``key_block_size`` or ``margin`` that is not a valid integer, ``"auto"`` without a budget, an
            integer block with a budget, a budget too small for the smallest key block.

    Complexity: with B = ``key_block_size`` (N_keys when None) and c = ``chunk_size``: time
    O(N_rows · N_keys · d) for the matmul plus O(N_rows · N_keys) for one pass of selection
    (:func:`hardbatch.graph.topk.select_topk`), O(N_rows · (k + margin) · d · N_keys / B) for the bf16
    re-scoring and O(N_rows · k · N_keys / B) for the merges; memory O(B · d) resident keys (×1.5 in
    bf16 mode) + O(c · d) rows + O(c · B) for the score block + O(N_rows · k) for the result; reads
    N_keys · d keys once and N_rows · d · ceil(N_keys / B) rows.

    Example:
        >>> import numpy as np
        >>> x = np.eye(4, dtype=np.float32) + 0.1
        >>> knn_exact(x, x, 1, exclude_self=True).indices.shape
        (4, 1)
        >>> knn_exact(x, x, 2, key_block_size=3).indices.tolist() == knn_exact(x, x, 2).indices.tolist()
        True
    """
    num_rows, num_keys = len(rows), len(keys)
    shard = row_offset is not None
    row_offset = row_offset or 0
    if exclude_self and (
        (not shard and num_rows != num_keys) or row_offset < 0 or num_rows + row_offset > num_keys
    ):
        raise ConfigError(
            f"exclude_self needs aligned rows and keys, got {num_rows} rows (offset {row_offset}) and "
            f"{num_keys} keys"
        )
    check_k(k, num_keys, exclude_self)
    dev = resolve_device(device)
    mode = resolve_precision(precision, dev)
    if margin is not None and margin < 0:
        raise ConfigError(f"margin must be >= 0, got {margin}")
    margin = _DEFAULT_MARGIN if margin is None else int(margin)
    check_chunk_size(chunk_size)
    block_keys, block_entries = _budget_key_block(key_block_size, memory_budget, keys, chunk_size, mode)
    chunk = chunk_size or _auto_chunk(block_keys, block_entries)
    indices = np.empty((num_rows, k), dtype=np.int32)
    scores = np.empty((num_rows, k), dtype=np.float32)
    redone = widened = 0
    key_starts = range(0, num_keys, block_keys)
    row_starts = range(0, num_rows, chunk)
    steps = itertools.product(key_starts, row_starts)  # key blocks outside: each is read once
    loaded = -1
    key_t = key_low = None
    key_bounds = (0.0, 0.0, 0.0)
    total = len(key_starts) * len(row_starts)
    buffer = ScoreBuffer()  # one score block's storage for every (row block, key block) pair
    for key_lo, start in progress(steps, f"kNN (exact, {mode})", total=total, show=show_progress):
        if key_lo != loaded:  # the next key block (the whole array when unblocked, as before)
            key_t = key_low = None
            key_t = as_tensor(keys if len(key_starts) == 1 else keys[key_lo : key_lo + block_keys], dev)
            if normalize:
                key_t = torch.nn.functional.normalize(key_t, dim=1)
            if mode == "bf16":
                key_low = key_t.to(torch.bfloat16)
                key_bounds = _bf16_key_bounds(key_t, key_low)
            loaded = key_lo
        row_t = as_tensor(rows[start : start + chunk], dev)
        if normalize:
            row_t = torch.nn.functional.normalize(row_t, dim=1)
        block_k = min(k, len(key_t))
        offset = start + row_offset - key_lo  # row r's own key is column r + offset of this block
        stop = start + len(row_t)
        held = None
        if key_lo:  # the top of keys [0, key_lo), held in the result arrays, is merged with this block's
            width = min(k, key_lo)
            held = (
                torch.from_numpy(scores[start:stop, :width]).to(dev),
                torch.from_numpy(indices[start:stop, :width]).to(dev, torch.int64) - key_lo,
            )
        merged_k = min(k, key_lo + len(key_t))
        if key_low is None:
            values, top = _fp32_topk(row_t, key_t, block_k, offset, exclude_self, buffer)
        else:
            values, top, widened_here, failed = _bf16_topk(
                row_t, key_t, key_low, key_bounds, block_k, margin, offset, exclude_self, buffer
            )
            widened += widened_here
            redone += failed
        if held is not None:  # by counting: the held keys all precede this block's
            values, top = merge_topk(*held, values, top, merged_k, ordered=True)
        top = top + key_lo
        width = top.shape[1]
        indices[start:stop, :width] = top.to(torch.int32).cpu().numpy()
        scores[start:stop, :width] = values.float().cpu().numpy()
    info: dict[str, Any] = {"precision": mode, "fp32_rows_redone": redone}
    if mode == "bf16":
        info.update(margin=margin, rows_widened=widened)
    if key_block_size is not None or memory_budget is not None:
        info.update(key_block_size=block_keys, key_blocks=len(key_starts))
    if memory_budget is not None:
        info.update(memory_budget=parse_memory_size(memory_budget), chunk_size=chunk)
    return KnnResult(indices=indices, scores=scores, info=info)


def knn_key_block(
    key_block_size: int | str | None,
    memory_budget: int | str | None,
    keys: np.ndarray | torch.Tensor | tuple[int, int],
    chunk_size: int | None = None,
    precision: str = "fp32",
) -> int | None:
    """The key block :func:`knn_exact` runs with: None (all keys), the given one, or the budget's choice.

    Resolving it before any work is done lets a caller reject a budget up front. With ``memory_budget`` it is
    the largest block whose :func:`knn_working_set` fits (with the automatic chunk's score budget when
    ``chunk_size`` is None). O(log N_keys) time, O(1) memory.

    Args:
        key_block_size, memory_budget: as in :func:`knn_exact`.
        keys: the (N_keys, d) keys, or just their shape ``(N_keys, d)``.
        chunk_size: rows per block (None: automatic).
        precision: "fp32" or "bf16", as resolved for the device (:func:`~hardbatch.graph.precision.resolve_precision`).

    Raises:
        ConfigError: bad options, or a budget too small for the smallest block.

    Example:
        >>> knn_key_block(None, "1GiB", (10_000, 384), 1024)
        10000
        >>> knn_key_block(37, None, (300, 8)), knn_key_block(None, None, (300, 8))
        (37, None)
    """
    entries = _block_entries(memory_budget, key_block_size, precision)
    return _resolve_key_block(key_block_size, memory_budget, keys, chunk_size, precision, entries)


def _resolve_key_block(
    key_block_size: int | str | None,
    memory_budget: int | str | None,
    keys: np.ndarray | torch.Tensor | tuple[int, int],
    chunk_size: int | None,
    precision: str,
    entries: int,
) -> int | None:
    """:func:`knn_key_block` for a known automatic-chunk score budget ``entries``."""
    num_keys, dim = key_shape(keys)
    return resolve_key_block_size(
        key_block_size, memory_budget, num_keys,
        lambda b: knn_working_set(b, dim, chunk_size, precision, entries), f"the exact kNN ({precision})",
    )  # fmt: skip


def _block_entries(memory_budget: int | str | None, key_block_size: int | str | None, mode: str) -> int:
    """Scores per block of the automatic chunk: 256 MiB of fp32 scores, or at most half the budget."""
    if memory_budget is None:
        return DEFAULT_BLOCK_BYTES // 4
    check_key_block_options(key_block_size, memory_budget)
    return _budget_block_entries(parse_memory_size(memory_budget), mode)


def _budget_key_block(
    key_block_size: int | str | None,
    memory_budget: int | str | None,
    keys: Any,
    chunk_size: int | None,
    mode: str,
) -> tuple[int, int]:
    """(keys per block, scores per block of the automatic chunk) from the key-block options."""
    num_keys = len(keys)
    entries = _block_entries(memory_budget, key_block_size, mode)
    block = _resolve_key_block(key_block_size, memory_budget, keys, chunk_size, mode, entries)
    return max(1, min(block or num_keys, num_keys)), entries


def _as_faiss_matrix(array: np.ndarray | torch.Tensor, normalize: bool) -> np.ndarray:
    matrix = as_tensor(array, torch.device("cpu")).numpy()
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if normalize:
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        matrix = matrix / np.maximum(norms, 1e-12)
    return matrix


def _drop_self(
    indices: np.ndarray, scores: np.ndarray, row_ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """From k+1 candidates per row, remove the row's own id (or the last candidate when absent)."""
    is_self = indices == row_ids[:, None]
    # Rows that do not contain themselves drop their worst candidate instead.
    missing = ~is_self.any(axis=1)
    is_self[missing, -1] = True
    keep = ~is_self
    # Exactly k True per row, so a boolean gather keeps the order and reshapes cleanly.
    return indices[keep].reshape(-1, k), scores[keep].reshape(-1, k)


def auto_ivf_lists(num_keys: int) -> int:
    """Default IVF list count: about 4·sqrt(N), with at least 39 keys per list (faiss's training minimum).

    Example:
        >>> auto_ivf_lists(1_000_000)
        4000
    """
    lists = int(4 * math.sqrt(num_keys))
    return max(1, min(lists, num_keys // 39 or 1))


def build_ivf_index(key_matrix: np.ndarray, *, nlist: int | None, nprobe: int, seed: int = 0):
    """A trained, filled faiss ``IndexIVFFlat`` (inner product) over contiguous fp32 ``key_matrix``.

    ``nlist`` defaults to :func:`auto_ivf_lists`; k-means trains on at most max(256·nlist, 10,000) sampled
    keys. ``nprobe`` lists are probed per query.
    Build time O(N · d · nlist) for the assignment plus the k-means iterations on the sample.
    """
    from hardbatch.errors import require

    faiss = require("faiss", "faiss", "IVF indexes")
    num_keys, dim = key_matrix.shape
    lists = max(1, min(nlist or auto_ivf_lists(num_keys), num_keys // 39 or 1))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = int(seed)
    train_rows = np.random.default_rng(seed).permutation(num_keys)[: max(lists * 256, 10_000)]
    index.train(key_matrix[np.sort(train_rows)])
    index.add(key_matrix)
    index.nprobe = int(min(nprobe, lists))
    return index


def _overlap(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over rows of |found ∩ exact| / width (both (R, width) with distinct ids per row)."""
    if exact.size == 0:
        return 1.0
    return float((found[:, :, None] == exact[:, None, :]).any(axis=2).mean())


def exact_rows(
    rows: np.ndarray | torch.Tensor,
    keys: np.ndarray | torch.Tensor,
    ids: np.ndarray,
    k: int,
    *,
    exclude_self: bool = False,
    normalize: bool = False,
    device: str | torch.device | None = "auto",
) -> np.ndarray:
    """Exact top-``k`` key ids (tie rule of :mod:`hardbatch.graph.topk`) of the rows ``ids`` only.

    Args:
        rows: (N_rows, d) float array.
        keys: (N_keys, d) float array.
        ids: (S,) int row ids to search; with ``exclude_self`` key ``ids[i]`` is never returned for it.
        k: neighbours per row.
        exclude_self: rows and keys are aligned.
        normalize: cosine similarity.
        device: torch device.

    Returns:
        (S, k) int64 key ids, best first. Time O(S · N_keys · d), memory O(c · N_keys) for a score block
        of c = min(1024, 256 MiB / (4 · N_keys)) rows.
    """
    dev = resolve_device(device)
    key_t = as_tensor(keys, dev)
    if normalize:
        key_t = torch.nn.functional.normalize(key_t, dim=1)
    out = np.empty((len(ids), k), dtype=np.int64)
    step = min(1024, _auto_chunk(len(key_t)))
    buffer = ScoreBuffer()
    for lo in range(0, len(ids), step):
        chunk = np.asarray(ids[lo : lo + step])
        row_t = as_tensor(take_rows(rows, chunk), dev)
        if normalize:
            row_t = torch.nn.functional.normalize(row_t, dim=1)
        block = block_scores(row_t, key_t, buffer)
        if exclude_self:
            block[torch.arange(len(chunk), device=dev), torch.as_tensor(chunk, device=dev)] = float("-inf")
        out[lo : lo + len(chunk)] = select_topk(block, k)[1].cpu().numpy()
    return out


def _search(faiss_index, query: np.ndarray, row_ids: np.ndarray, k: int, exclude_self: bool):
    search_k = k + 1 if exclude_self else k
    found_scores, found = faiss_index.search(query, search_k)
    found_scores = np.where(found < 0, -np.inf, found_scores).astype(np.float32)
    if exclude_self:
        found, found_scores = _drop_self(found, found_scores, row_ids, k)
    return found, found_scores


def _calibrate(
    set_param,
    candidates: list[int],
    faiss_index,
    rows: np.ndarray | torch.Tensor,
    keys: np.ndarray | torch.Tensor,
    k: int,
    *,
    target: float,
    columns: tuple[int, int] | None,
    sample: int,
    exclude_self: bool,
    normalize: bool,
    seed: int,
) -> tuple[int, list[tuple[int, float]]]:
    """Smallest search parameter (nprobe / efSearch) among ``candidates`` reaching ``target`` recall.

    Recall is measured on ``sample`` random rows against :func:`exact_rows`, over result ranks
    ``columns`` (B3's window [skip, skip + window)) or all k. Returns the choice and the (param, recall)
    trace; the last candidate is returned when none reaches the target.
    """
    num_rows = len(rows)
    ids = np.sort(np.random.default_rng([int(seed), 0xCA1]).permutation(num_rows)[: min(sample, num_rows)])
    exact = exact_rows(rows, keys, ids, k, exclude_self=exclude_self, normalize=normalize, device="cpu")
    query = _as_faiss_matrix(take_rows(rows, ids), normalize)
    lo, hi = columns or (0, k)
    trace: list[tuple[int, float]] = []
    for value in candidates:
        set_param(value)
        found, _ = _search(faiss_index, query, ids, k, exclude_self)
        recall = _overlap(found[:, lo:hi], exact[:, lo:hi])
        trace.append((int(value), round(recall, 4)))
        if recall >= target:
            return int(value), trace
    return int(candidates[-1]), trace


def knn_faiss(
    rows: np.ndarray | torch.Tensor,
    keys: np.ndarray | torch.Tensor,
    k: int,
    *,
    index: Literal["hnsw", "ivf"] = "hnsw",
    exclude_self: bool = False,
    normalize: bool = False,
    hnsw_m: int = 32,
    ef_construction: int = 64,
    ef_search: int | None = None,
    nlist: int | None = None,
    nprobe: int | None = None,
    recall_target: float | None = None,
    recall_columns: tuple[int, int] | None = None,
    calibration_sample: int = 500,
    batch_size: int = 16384,
    seed: int = 0,
    show_progress: bool | None = None,
) -> KnnResult:
    """Approximate top-``k`` keys of every row by inner product with a faiss HNSW or IVF index (CPU).

    With ``recall_target`` (and no explicit ``nprobe`` / ``ef_search``) the search effort is *chosen*: IVF's
    ``nprobe`` doubles from 8 (HNSW's ``efSearch`` from max(2k, 64)) until recall against exact search on
    ``calibration_sample`` random rows reaches the target, measured over result ranks ``recall_columns``
    (B3 passes its window [skip, skip + window), which is harder than recall@k: a missed top neighbour
    shifts the whole window). The choice and the trace are in ``info``.

    Args:
        rows: (N_rows, d) float array.
        keys: (N_keys, d) float array (indexed).
        k: neighbours per row.
        index: "hnsw" (``IndexHNSWFlat``, no training) or "ivf" (``IndexIVFFlat``, k-means trained).
        exclude_self: rows and keys are aligned; never return key i for row i (searches k+1).
        normalize: L2-normalise first (cosine similarity).
        hnsw_m: HNSW graph degree M.
        ef_construction: HNSW build beam.
        ef_search: HNSW search beam (default ``max(2·k, 64)`` or calibrated; must be >= k).
        nlist: IVF lists (default :func:`auto_ivf_lists`: 4·sqrt(N_keys), at most N_keys / 39).
        nprobe: IVF lists probed per query (default 16, or calibrated with ``recall_target``).
        recall_target: calibrate the search effort to this recall (e.g. 0.95).
        recall_columns: result ranks ``(lo, hi)`` the calibration measures (default all k).
        calibration_sample: rows of the calibration (cost O(sample · N_keys · d) once).
        batch_size: rows per search call (bounds the temporary distance buffers).
        seed: k-means seed of the IVF training and of the calibration sample.
        show_progress: progress bar over search batches.

    Returns:
        :class:`KnnResult` (int32 indices, float32 scores), best first; rare rows with fewer than k hits
        found by the index are padded with index -1 and score -inf.

    Complexity: see the module docstring. Requires the ``faiss`` extra.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
        >>> knn_faiss(x, x, 5, exclude_self=True).indices.shape
        (200, 5)
    """
    from hardbatch.errors import require

    faiss = require("faiss", "faiss", "approximate kNN")
    num_rows, num_keys = len(rows), len(keys)
    if exclude_self:
        check_aligned("exclude_self", num_rows, num_keys)
    check_k(k, num_keys, exclude_self)
    if recall_target is not None and not 0.0 < float(recall_target) <= 1.0:
        raise ConfigError(f"recall_target must lie in (0, 1], got {recall_target!r}")
    key_matrix = _as_faiss_matrix(keys, normalize)
    dim = key_matrix.shape[1]
    search_k = k + 1 if exclude_self else k
    info: dict[str, Any] = {"index": index}
    calibrate = dict(
        target=float(recall_target or 0.0),
        columns=recall_columns,
        sample=calibration_sample,
        exclude_self=exclude_self,
        normalize=normalize,
        seed=seed,
    )
    if index == "hnsw":
        faiss_index = faiss.IndexHNSWFlat(dim, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        faiss_index.hnsw.efConstruction = int(ef_construction)
        faiss_index.add(key_matrix)
        base = max(2 * search_k, 64)

        def set_ef(value: int) -> None:
            faiss_index.hnsw.efSearch = int(max(value, search_k))

        if ef_search is None and recall_target is not None:
            ladder = [base * 2**i for i in range(8) if base * 2**i <= max(4096, base)]
            ef_search, info["calibration"] = _calibrate(
                set_ef, ladder, faiss_index, rows, keys, k, **calibrate
            )
        set_ef(ef_search or base)
        info["ef_search"] = int(faiss_index.hnsw.efSearch)
    elif index == "ivf":
        faiss_index = build_ivf_index(key_matrix, nlist=nlist, nprobe=nprobe or 16, seed=seed)
        lists = int(faiss_index.nlist)

        def set_nprobe(value: int) -> None:
            faiss_index.nprobe = int(min(value, lists))

        if nprobe is None and recall_target is not None:
            ladder = sorted({min(8 * 2**i, lists) for i in range(32) if 8 * 2 ** (i - 1) < lists})
            nprobe, info["calibration"] = _calibrate(
                set_nprobe, ladder, faiss_index, rows, keys, k, **calibrate
            )
        set_nprobe(nprobe or 16)
        info.update(nlist=lists, nprobe=int(faiss_index.nprobe))
    else:
        raise ConfigError(f"unknown faiss index {index!r}; expected 'hnsw' or 'ivf'")
    indices = np.empty((num_rows, k), dtype=np.int32)
    scores = np.empty((num_rows, k), dtype=np.float32)
    starts = range(0, num_rows, batch_size)
    for start in progress(starts, f"kNN ({index})", show=show_progress):
        stop = min(start + batch_size, num_rows)
        query = _as_faiss_matrix(rows[start:stop], normalize)
        found, found_scores = _search(faiss_index, query, np.arange(start, stop), k, exclude_self)
        indices[start:stop] = found
        scores[start:stop] = found_scores
    return KnnResult(indices=indices, scores=scores, info=info)


def knn(
    rows: np.ndarray | torch.Tensor,
    keys: np.ndarray | torch.Tensor,
    k: int,
    *,
    backend: KnnBackend = "exact",
    exclude_self: bool = False,
    normalize: bool = False,
    device: str | torch.device | None = "auto",
    chunk_size: int | None = None,
    precision: str = "auto",
    key_block_size: int | str | None = None,
    memory_budget: int | str | None = None,
    show_progress: bool | None = None,
    **faiss_options: Any,
) -> KnnResult:
    """Top-``k`` keys of every row by inner product with the chosen backend.

    Args:
        rows: (N_rows, d) float array.
        keys: (N_keys, d) float array.
        k: neighbours per row.
        backend: "exact" (chunked torch matmul, GPU when present), "hnsw" or "ivf" (faiss, approximate),
            "ivf_torch" (grouped IVF at matmul speed, :func:`hardbatch.graph.ivf.knn_ivf`).
        exclude_self: rows and keys are aligned; row i never gets key i.
        normalize: L2-normalise first.
        device: device of the exact and ivf_torch backends (faiss runs on the CPU).
        chunk_size: rows per block of the exact backend.
        precision: matmul precision of the exact and ivf_torch backends ("auto", "fp32", "bf16"; same answer).
        key_block_size: keys resident at a time in the exact backend (None: all; "auto": from the budget;
            see :func:`knn_exact`).
        memory_budget: bytes (or "4GiB") the exact backend's key and score blocks may take.
        show_progress: progress bar.
        **faiss_options: passed to :func:`knn_faiss` (``hnsw_m``, ``ef_search``, ``nlist``, ``nprobe``...)
            or, for "ivf_torch", to :func:`~hardbatch.graph.ivf.knn_ivf` (``nlist``, ``nprobe``,
            ``recall_target``, ``recall_columns``, ``calibration_sample``, ``seed``).

    Returns:
        :class:`KnnResult`.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
        >>> knn(x, x, 3, exclude_self=True).k
        3
    """
    if backend == "exact":
        if faiss_options:
            raise ConfigError(f"options {sorted(faiss_options)} only apply to the faiss backends")
        return knn_exact(
            rows,
            keys,
            k,
            exclude_self=exclude_self,
            chunk_size=chunk_size,
            device=device,
            normalize=normalize,
            precision=precision,
            key_block_size=key_block_size,
            memory_budget=memory_budget,
            show_progress=show_progress,
        )
    if key_block_size is not None or memory_budget is not None:
        raise ConfigError(
            "key_block_size and memory_budget only apply to the exact backend (faiss indexes hold every key)"
        )
    if backend == "ivf_torch":
        from hardbatch.graph.ivf import knn_ivf

        return knn_ivf(
            rows,
            keys,
            k,
            exclude_self=exclude_self,
            normalize=normalize,
            device=device,
            precision=precision,
            show_progress=show_progress,
            **faiss_options,
        )
    if backend in ("hnsw", "ivf"):
        return knn_faiss(
            rows,
            keys,
            k,
            index=backend,
            exclude_self=exclude_self,
            normalize=normalize,
            show_progress=show_progress,
            **faiss_options,
        )
    raise ConfigError(f"unknown kNN backend {backend!r}; expected 'exact', 'hnsw', 'ivf' or 'ivf_torch'")


def knn_recall(
    approx: KnnResult,
    rows: np.ndarray | torch.Tensor,
    keys: np.ndarray | torch.Tensor,
    *,
    sample: int = 1000,
    exclude_self: bool = False,
    normalize: bool = False,
    seed: int = 0,
    device: str | torch.device | None = "auto",
    columns: tuple[int, int] | None = None,
) -> float:
    """Recall of an approximate result against exact search, measured on a random sample of rows.

    Args:
        approx: result of an approximate search over the same ``rows``/``keys``.
        rows: (N_rows, d) float array.
        keys: (N_keys, d) float array.
        sample: rows to check (all when fewer); cost O(sample · N_keys · d).
        exclude_self: as used for ``approx``.
        normalize: as used for ``approx``.
        seed: which rows are sampled.
        device: device of the exact check.
        columns: result ranks ``(lo, hi)`` compared (B3's window [skip, skip + window)); default all k.

    Returns:
        Mean over sampled rows of |approx[lo:hi] ∩ exact[lo:hi]| / (hi - lo), in [0, 1].

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
        >>> knn_recall(knn_exact(x, x, 5), x, x)
        1.0
    """
    lo, hi = columns or (0, approx.k)
    return recall_report(
        approx,
        rows,
        keys,
        ranges={"recall": (lo, hi)},
        sample=sample,
        exclude_self=exclude_self,
        normalize=normalize,
        seed=seed,
        device=device,
    )["recall"]


def recall_report(
    approx: KnnResult,
    rows: np.ndarray | torch.Tensor,
    keys: np.ndarray | torch.Tensor,
    *,
    ranges: dict[str, tuple[int, int]],
    sample: int = 1000,
    exclude_self: bool = False,
    normalize: bool = False,
    seed: int = 0,
    device: str | torch.device | None = "auto",
    hardness: tuple[int, int] | None = None,
) -> dict[str, float]:
    """:func:`knn_recall` over several rank ranges at the cost of one exact check.

    With ``hardness=(lo, hi)`` the result also holds ``"hardness"``: how hard the approximate window's keys
    are compared with the exact window's, (mean s(found) − mean s(random)) / (mean s(exact) − mean s(random))
    over the sampled rows, s the row·key inner product and "random" 64 random keys per row. 1.0: as hard as
    the exact window (a missed neighbour replaced by one of equal score costs nothing); 0.0: no harder than
    random keys. Where ranks inside a dense region are decided by small score differences, recall can be
    low while hardness stays near 1, and that is what the batches feel.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
        >>> recall_report(knn_exact(x, x, 5), x, x, ranges={"all": (0, 5), "tail": (2, 5)})
        {'all': 1.0, 'tail': 1.0}
    """
    num_rows, k = approx.indices.shape
    chosen = np.sort(np.random.default_rng(seed).permutation(num_rows)[: min(sample, num_rows)])
    exact = exact_rows(rows, keys, chosen, k, exclude_self=exclude_self, normalize=normalize, device=device)
    found = approx.indices[chosen]
    report = {name: _overlap(found[:, lo:hi], exact[:, lo:hi]) for name, (lo, hi) in ranges.items()}
    if hardness is not None:
        lo, hi = hardness
        report["hardness"] = _window_hardness(
            rows, keys, chosen, found[:, lo:hi], exact[:, lo:hi], normalize, seed
        )
    return report


def _window_hardness(
    rows: np.ndarray | torch.Tensor,
    keys: np.ndarray | torch.Tensor,
    ids: np.ndarray,
    found: np.ndarray,
    exact: np.ndarray,
    normalize: bool,
    seed: int,
) -> float:
    """Score of ``found`` windows above random keys, relative to the ``exact`` windows' (float64)."""
    rng = np.random.default_rng([int(seed), 0x4A2D])
    random_keys = rng.integers(0, len(keys), size=(len(ids), 64))
    sums = np.zeros(3)
    for lo in range(0, len(ids), 256):
        part = slice(lo, lo + 256)
        row = _float64_rows(rows, ids[part], normalize)
        for slot, columns in enumerate((found[part], exact[part], random_keys[part])):
            valid = columns >= 0
            picked = _float64_rows(keys, np.where(valid, columns, 0).reshape(-1), normalize)
            scores = np.einsum("rd,rcd->rc", row, picked.reshape(*columns.shape, -1))
            sums[slot] += np.where(valid, scores, 0.0).sum(axis=1).dot(1.0 / np.maximum(valid.sum(1), 1))
    spread = sums[1] - sums[2]
    return float((sums[0] - sums[2]) / spread) if spread > 0 else 1.0


def _float64_rows(matrix: np.ndarray | torch.Tensor, ids: np.ndarray, normalize: bool) -> np.ndarray:
    picked = take_rows(matrix, ids)
    values = np.asarray(
        picked.cpu().numpy() if isinstance(picked, torch.Tensor) else picked, dtype=np.float64
    )
    if normalize:
        values /= np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-12)
    return values
