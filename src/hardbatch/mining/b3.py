"""B3 batch mining: teacher ranking → rank-window graph → METIS → clusters of K → batches.

"Breaking the Batch Barrier (B3) of Contrastive Learning via Smart Batch Mining", Thirukovalluru et al.,
NeurIPS 2025 (arXiv 2505.11293). For every query i a teacher ranks every *positive* j ≠ i by sim(q_i, p_j);
ranks ``[skip, skip + window)`` are i's strong negatives (the top ``skip`` are likely false negatives).
Pairs that are in each other's window form an undirected graph; METIS cuts it into N/K balanced parts,
repaired to exactly K members; every batch is ``batch_size / K`` random clusters, re-drawn every epoch.

Stages and their cost with N examples (per source when ``sources`` is given), dimension d, window m and
skip p:

=============  ====================================  =======================================
stage          time                                  memory
=============  ====================================  =======================================
kNN exact      O(N² · d) (chunked matmul + topk)     O(chunk · N + N · (p + m))
kNN hnsw       O(N · log N · d · ef)                 O(N · (d + M) + N · (p + m))
graph          O(N · m · log(N · m))                 O(N · (p + m)) (window + skipped)
partition      METIS ≈ O(N · m); repair O(N log N)   O(N · m)
hardness       O(N · K · d)                          O(chunk · K²)
=============  ====================================  =======================================

The teacher kNN dominates: O(N² · d) time, 1.5–1.8× a bare fp32 N × N matmul on 2 CPU cores (docs/b3.md, "Scale").
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from hardbatch.device import resolve_device
from hardbatch.errors import ConfigError
from hardbatch.graph.budget import check_key_block_options
from hardbatch.graph.knn import KnnResult, knn_key_block, recall_report
from hardbatch.graph.knn import knn as run_knn
from hardbatch.graph.partition import balanced_clusters, metis_mode
from hardbatch.graph.precision import resolve_precision
from hardbatch.graph.rank_window import filter_window, graph_stats, mutual_graph, rank_window, window_matrix
from hardbatch.graph.similarity import RowSubset, as_tensor
from hardbatch.ids import stable_ids
from hardbatch.mining.plan import BatchPlan, input_hashes
from hardbatch.progress import StageTimer, peak_rss_mb
from hardbatch.validation import check_batch_size, check_embeddings, check_same_length

__all__ = [
    "KEY_BLOCK_OPTIONS",
    "check_key_blocks",
    "cluster_hardness",
    "effective_window",
    "mine_b3",
    "per_source_setting",
]

#: Key of a per-source mapping that applies to every source not named in it.
DEFAULT_KEY = "*"

_KNN_BACKENDS = ("exact", "hnsw", "ivf", "ivf_torch")


def _as_numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else array


def _source_codes(sources: Sequence[Any] | np.ndarray, num_examples: int) -> tuple[np.ndarray, list[str]]:
    values = np.asarray([str(s) for s in sources], dtype=object)
    check_same_length(examples=num_examples, sources=len(values))
    names, codes = np.unique(values, return_inverse=True)
    return codes.astype(np.int32), [str(name) for name in names]


def _text_ids(texts: Sequence[str], num_examples: int) -> np.ndarray:
    check_same_length(examples=num_examples, positive_texts=len(texts))
    return stable_ids(texts)


def _positive_scores(
    query: np.ndarray, positive: np.ndarray, normalize: bool, chunk: int = 65536
) -> np.ndarray:
    """(N,) float32 sim(q_i, p_i), computed in chunks."""
    out = np.empty(len(query), dtype=np.float32)
    cpu = torch.device("cpu")
    for start in range(0, len(query), chunk):
        q = as_tensor(query[start : start + chunk], cpu)
        p = as_tensor(positive[start : start + chunk], cpu)
        if normalize:
            q, p = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(p, dim=1)
        out[start : start + len(q)] = (q * p).sum(dim=1).numpy()
    return out


#: Bytes one block of :func:`cluster_hardness` may take (gathered rows, their normalised copies, sims).
HARDNESS_BLOCK_BYTES = 64 << 20


def hardness_chunk(size: int, dim: int, block_bytes: int = HARDNESS_BLOCK_BYTES) -> int:
    """Groups of ``size`` members per :func:`cluster_hardness` block so that one block fits ``block_bytes``.

    Per group: query and positive rows gathered twice (fancy index, then normalised) and the S × S
    similarities, in fp32: 4 · S · (4·d + S) bytes.

    Example:
        >>> hardness_chunk(32, 384)
        334
    """
    per_group = 4 * size * (4 * dim + size)
    return max(1, block_bytes // per_group)


def cluster_hardness(
    query_emb: np.ndarray | torch.Tensor,
    positive_emb: np.ndarray | torch.Tensor,
    groups: np.ndarray,
    *,
    normalize: bool = True,
    chunk: int | None = None,
) -> float:
    """Mean teacher similarity sim(q_i, p_j) over ordered pairs i ≠ j inside the same group.

    The hardness of in-batch negatives: B3 clusters should score far above random groups of the same size.

    Args:
        query_emb: (N, d) float query embeddings.
        positive_emb: (N, d) float positive embeddings.
        groups: (G, S) int example ids, one group (cluster or batch) per row.
        normalize: cosine similarity.
        chunk: groups per block; memory O(chunk · S · (S + d)). Default: as many as fit in
            :data:`HARDNESS_BLOCK_BYTES` (64 MiB), whatever N is (4,096 groups of 32 at d = 384 took ~0.8 GB).

    Returns:
        The mean off-diagonal similarity (0.0 when groups have fewer than 2 members).

    Example:
        >>> import numpy as np
        >>> x = np.ones((4, 3), dtype=np.float32)
        >>> round(cluster_hardness(x, x, np.array([[0, 1], [2, 3]])), 4)
        1.0
    """
    groups = np.asarray(groups, dtype=np.int64)
    if groups.ndim != 2 or groups.shape[1] < 2 or groups.shape[0] == 0:
        return 0.0
    size = groups.shape[1]
    if chunk is None:
        chunk = hardness_chunk(size, int(np.shape(query_emb)[1]))
    total = 0.0
    cpu = torch.device("cpu")
    for start in range(0, len(groups), chunk):
        ids = groups[start : start + chunk]
        flat = np.sort(ids.reshape(-1))
        position = np.searchsorted(flat, ids.reshape(-1))
        q = as_tensor(_as_numpy(query_emb)[flat], cpu)[position].view(len(ids), size, -1)
        p = as_tensor(_as_numpy(positive_emb)[flat], cpu)[position].view(len(ids), size, -1)
        if normalize:
            q, p = torch.nn.functional.normalize(q, dim=2), torch.nn.functional.normalize(p, dim=2)
        sims = torch.bmm(q, p.transpose(1, 2))
        total += float(sims.sum() - sims.diagonal(dim1=1, dim2=2).sum())
    return total / (len(groups) * size * (size - 1))


def _validate(
    query_emb: Any,
    positive_emb: Any,
    batch_size: int,
    cluster_size: int,
    knn_backend: str,
    community: str,
) -> int:
    check_embeddings(query_emb, "query embeddings")
    num_examples, dim = query_emb.shape
    check_same_length(query_embeddings=num_examples, positive_embeddings=len(positive_emb))
    check_embeddings(positive_emb, "positive embeddings", rows=num_examples, dim=dim)
    if not isinstance(cluster_size, int | np.integer) or cluster_size < 1:
        raise ConfigError(f"cluster_size must be a positive integer, got {cluster_size!r}")
    check_batch_size(batch_size, num_examples, multiple_of=cluster_size)
    metis_mode(community)  # rejects an unknown community method
    if knn_backend not in _KNN_BACKENDS:
        raise ConfigError(f"unknown knn backend {knn_backend!r}; expected one of {', '.join(_KNN_BACKENDS)}")
    return num_examples


#: :func:`mine_b3` options that bound the exact kNN's memory; they never change the plan.
KEY_BLOCK_OPTIONS = ("key_block_size", "memory_budget")


def check_key_blocks(options: Mapping[str, Any], *, num_keys: int | None = None, dim: int = 1) -> None:
    """Reject :func:`mine_b3`'s key-block options before anything is embedded or mined.

    Malformed or contradictory ``key_block_size`` / ``memory_budget``
    (:func:`~hardbatch.graph.budget.check_key_block_options`) and key blocks with an approximate ``knn``
    always; with ``num_keys`` and a budget, also a budget too small for the exact kNN's smallest key block
    (:func:`~hardbatch.graph.knn.knn_key_block`, with the options' ``chunk_size`` and the ``precision`` the
    ``device`` resolves it to: an unknown precision or device is an error then). O(log num_keys) time,
    O(1) memory.

    Args:
        options: :func:`mine_b3` keyword arguments (only ``key_block_size``, ``memory_budget``, ``knn``,
            ``chunk_size``, ``precision`` and ``device`` are read; missing ones take mine_b3's defaults).
        num_keys: the most keys one kNN searches (N, the largest source group or shard); None: skip the
            budget's fit.
        dim: d of the embeddings; 1 when not known yet (a lower bound: then only budgets that fit no
            embedding are found here, the others when the kNN starts).

    Raises:
        ConfigError: naming the option at fault.

    Example:
        >>> check_key_blocks({"memory_budget": "1GiB"}, num_keys=10_000, dim=384)
        >>> check_key_blocks({"key_block_size": "auto"})
        Traceback (most recent call last):
        ...
        hardbatch.errors.ConfigError: key_block_size='auto' needs memory_budget (e.g. '4GiB')
    """
    block, budget = options.get("key_block_size"), options.get("memory_budget")
    check_key_block_options(block, budget)
    knn = options.get("knn", "exact")
    if (block is not None or budget is not None) and knn != "exact":
        raise ConfigError(f"key_block_size and memory_budget apply to knn='exact' only, got knn={knn!r}")
    if num_keys is not None and budget is not None:
        device = resolve_device(options.get("device", "auto"))
        mode = resolve_precision(options.get("precision", "auto"), device)
        knn_key_block(block, budget, (num_keys, dim), options.get("chunk_size"), mode)


def per_source_setting(
    value: int | Mapping[str, int], name: str, source_names: list[str] | None, *, minimum: int
) -> list[int]:
    """Resolve an int or a ``{source: int}`` mapping into one value per source (in ``source_names`` order).

    A mapping may hold the key ``"*"`` for every source it does not name; a source that is neither named
    nor covered by ``"*"``, or a key that names no source, is an error (a typo must not silently fall back).

    Args:
        value: one value for every source, or a mapping source → value.
        name: the option's name, for messages (``skip``, ``window``).
        source_names: the sources (``None``: the data has none; a mapping then needs ``"*"``).
        minimum: smallest allowed value.

    Returns:
        One int per source (one element without sources).

    Raises:
        ConfigError: unknown or missing sources, values below ``minimum``, non-integers.

    Example:
        >>> per_source_setting({"vqa": 70, "*": 30}, "skip", ["vqa", "web"], minimum=0)
        [70, 30]
    """
    groups = source_names if source_names is not None else [None]
    if isinstance(value, Mapping):
        mapping = {str(k): v for k, v in value.items()}
        known = set(source_names or [])
        unknown = sorted(k for k in mapping if k != DEFAULT_KEY and k not in known)
        if unknown:
            raise ConfigError(
                f"{name}: no source named {', '.join(unknown)} (sources: {', '.join(sorted(known)) or 'none'})"
            )
        missing = [g for g in groups if (g is None or g not in mapping) and DEFAULT_KEY not in mapping]
        if missing:
            where = "the data has no sources" if source_names is None else f"missing {', '.join(missing)}"
            raise ConfigError(
                f"{name}: give a value for every source or a default ('*' / --{name}-default); {where}"
            )
        values = [mapping[g] if g is not None and g in mapping else mapping[DEFAULT_KEY] for g in groups]
    else:
        values = [value] * len(groups)
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < minimum:
            raise ConfigError(f"{name} must be an integer >= {minimum}, got {v!r}")
        out.append(int(v))
    return out


def effective_window(skip: int, window: int, count_self: bool) -> tuple[int, int]:
    """Columns ``[start, start + width)`` of a neighbour list that *excludes* the example itself.

    The paper and the official code rank every positive, the example's own included (normally at rank 0),
    and keep ranks ``[p, p + m)``; so with ``count_self`` the skip p counts the example itself and the
    window over the *other* examples starts one rank earlier (and, for p = 0, is one shorter because the
    example's own rank 0 falls inside it and is dropped). Without ``count_self`` p counts other examples
    only.

    Example:
        >>> effective_window(30, 100, True), effective_window(0, 100, True), effective_window(30, 100, False)
        ((29, 100), (0, 99), (30, 100))
    """
    if not count_self:
        return skip, window
    start = max(skip - 1, 0)
    return start, skip + window - 1 - start


def mine_b3(
    query_emb: np.ndarray | torch.Tensor,
    positive_emb: np.ndarray | torch.Tensor,
    *,
    batch_size: int,
    cluster_size: int = 32,
    skip: int | Mapping[str, int] = 30,
    window: int | Mapping[str, int] = 100,
    count_self: bool = True,
    seed: int = 0,
    knn: str = "exact",
    sources: Sequence[Any] | np.ndarray | None = None,
    same_source: bool = True,
    positive_texts: Sequence[str] | None = None,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
    max_score: float | None = None,
    normalize: bool = True,
    device: str | torch.device | None = "auto",
    chunk_size: int | None = None,
    key_block_size: int | str | None = None,
    memory_budget: int | str | None = None,
    faiss_options: dict[str, int] | None = None,
    recall_sample: int = 1000,
    precision: str = "auto",
    recall_target: float | None = 0.95,
    neighbor_search: Callable[[Any, Any, int, np.ndarray, dict[str, Any]], KnnResult] | None = None,
    store_window: bool = True,
    store_neighbors: bool = True,
    dataset_hash: str | None = None,
    show_progress: bool | None = None,
    classification: bool | Sequence[str] = False,
    label_fraction: float = 0.3,
    community: str = "metis",
) -> BatchPlan:
    """Mine B3 batches: clusters of exactly K mutual strong negatives under a teacher.

    Args:
        query_emb: (N, d) float teacher embeddings of the queries (numpy, memory-mapped or torch).
        positive_emb: (N, d) float teacher embeddings of the positives, aligned with the queries.
        batch_size: |B|, examples per batch; a multiple of ``cluster_size`` and <= N.
        cluster_size: K, examples per cluster (paper default 32).
        skip: p, top teacher ranks ignored as likely false negatives (paper: 30 for retrieval and
            grounding, 70 for VQA): an int, or a mapping source → int (key ``"*"``: every other source).
        window: m, ranks kept after the skipped ones (paper: 100); an int or a mapping like ``skip``.
        count_self: the paper's count: the example itself is rank 0 of the p skipped ranks, so p=30
            skips the example and its 29 nearest others (see :func:`effective_window`). ``False``: p counts
            other examples only (hardbatch before 0.2).
        seed: METIS, repair and per-epoch shuffle seed.
        knn: "exact" (chunked matmul, GPU when present), "hnsw" or "ivf" (faiss, approximate) or
            "ivf_torch" (grouped IVF at matmul speed, bf16 where fast: the choice at 1M and beyond; see
            :func:`hardbatch.graph.ivf.knn_ivf`); the approximate ones' recall against exact is measured on
            ``recall_sample`` rows and stored in the stats.
        sources: (N,) source/dataset name per example; each source is mined separately (as in B3).
        same_source: default of :meth:`BatchPlan.batches`: keep each batch within one source.
        positive_texts: (N,) positive texts; candidates whose positive text equals i's are dropped.
        absolute_margin: drop candidates with ``sim(q_i, p_j) > sim(q_i, p_i) - absolute_margin``.
        relative_margin: drop candidates with ``sim(q_i, p_j) > sim(q_i, p_i) · (1 - relative_margin)``.
        max_score: drop candidates with ``sim(q_i, p_j) > max_score``.
        normalize: cosine similarity (L2-normalise the embeddings first).
        device: device of the exact kNN ("auto": CUDA when available).
        chunk_size: query rows per similarity block (exact kNN).
        key_block_size: positives resident at a time in the exact kNN (None: all of them); the positives
            are then read block by block, once, from ``positive_emb`` (e.g. a memory-mapped ``.npy``), and
            the ranking is the unblocked one (see :func:`hardbatch.graph.knn.knn_exact`). Memory of the
            kNN stage O(key_block_size · d + chunk · key_block_size) instead of O(N · d + chunk · N); a
            source group is then read on demand (:class:`~hardbatch.graph.similarity.RowSubset`), not
            copied first. ``"auto"``: the largest block whose working set fits ``memory_budget``, chosen per
            source group (:func:`hardbatch.graph.knn.knn_working_set`).
        memory_budget: bytes (or a size like "4GiB") the exact kNN's key block, row block and score block
            may take; alone it means ``key_block_size="auto"``. The running top lists (8·N·(p+m) bytes) and
            the later stages come on top (see docs/b3.md, "Streaming inputs and memory bounds"). Both
            options, when given, are recorded in ``params`` (a sampler's re-mine uses them again).
        faiss_options: extra options of :func:`hardbatch.graph.knn.knn_faiss` (``hnsw_m``, ``ef_search``...).
        recall_sample: rows used to measure approximate-kNN recall (0 to skip); the plan stores recall@k
            (``knn_recall``), the recall of the window ranks [skip, skip + window) (``knn_window_recall``)
            and how hard the found windows are against the exact ones (``knn_window_hardness``: 1.0 as hard,
            0.0 no harder than random keys; see :func:`hardbatch.graph.knn.recall_report`).
        precision: matmul precision of the exact kNN: "auto" (bf16 where fast, see
            :mod:`hardbatch.graph.precision`), "fp32" or "bf16"; the windows are the fp32 ones either way.
        recall_target: the approximate backends choose their search effort (IVF ``nprobe``, HNSW
            ``efSearch``) to reach this window recall on a calibration sample, unless ``faiss_options`` sets
            it; None keeps faiss defaults.
        neighbor_search: replaces the kNN stage: called as ``fn(query_part, positive_part, k, ids, options)``
            per source group (``ids``: the group's example ids; ``options``: the backend options the kNN would
            get, e.g. ivf_torch's ``recall_target`` and ``recall_columns``) and must return what
            :func:`hardbatch.graph.knn.knn` would with ``exclude_self=True``; :func:`hardbatch.mining.distributed.mine_b3_distributed` uses it
            to spread the ranking over ranks.
        store_window: keep the filtered directed rank window in the plan (B3++ hard negatives, inspection);
            costs N · m int32.
        store_neighbors: keep the mutual graph in the plan.
        dataset_hash: fingerprint of the dataset the embeddings came from (stored, checked on load).
        show_progress: progress bars (default: on unless ``HARDBATCH_PROGRESS=0``).
        classification: sources whose positives are class labels (``True``: all examples). Their graph is
            label-level, as in the official classification script: the teacher ranks the distinct labels
            for each query, the gold label is filtered out (``skip`` is not used), and i → j for every j
            whose label is among i's top ``label_fraction`` of labels; mutual edges as usual. Their B3++
            pool (``window``) is one example per label of i's first ``window`` ranked labels. Needs
            ``positive_texts`` (the label texts). Cost O(label_fraction · n²) edges for a source of n
            examples: mine large classification sets in subsets (the official code uses 10k).
        label_fraction: share of the distinct labels linked per example in classification sources.
        community: ``"metis"`` (the paper's METIS, by recursive bisection: harder clusters and 4–5× faster
            than one k-way call at K = 32, measured in docs/b3.md), ``"metis-kway"`` (one k-way call, as the
            official code), ``"leiden"`` or ``"louvain"``; each followed by the same exact-K repair
            (:func:`hardbatch.graph.partition.balanced_clusters`). The plan records ``metis_mode``.

    Returns:
        A :class:`~hardbatch.mining.plan.BatchPlan` with ``N // K`` clusters (per source), the remainder,
        parameters, input hashes and stage statistics.

    Raises:
        DataError: NaN/inf or malformed embeddings, mismatched lengths.
        ConfigError: batch size not a multiple of K or larger than N, bad skip/window/backend.

    References:
        Thirukovalluru et al., "Breaking the Batch Barrier (B3) of Contrastive Learning via Smart Batch
        Mining", NeurIPS 2025. Margin filters: Moreira et al., NV-Retriever (arXiv 2407.15831).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> centers = rng.normal(size=(8, 16))
        >>> q = (np.repeat(centers, 8, axis=0) + 0.1 * rng.normal(size=(64, 16))).astype(np.float32)
        >>> plan = mine_b3(q, q, batch_size=16, cluster_size=8, skip=0, window=7, show_progress=False)
        >>> plan.num_clusters, len(plan.batches(epoch=0))
        (8, 4)
    """
    num_examples = _validate(query_emb, positive_emb, batch_size, cluster_size, knn, community)
    check_key_blocks({"key_block_size": key_block_size, "memory_budget": memory_budget, "knn": knn})
    blocked = key_block_size is not None or memory_budget is not None
    for name, value in (
        ("absolute_margin", absolute_margin),
        ("relative_margin", relative_margin),
        ("max_score", max_score),
    ):
        if value is not None and not math.isfinite(float(value)):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
    timer = StageTimer()
    started = time.perf_counter()
    with timer.stage("hash"):
        hashes = input_hashes(query_emb, positive_emb, dataset_hash)
    codes, source_names = (None, None)
    if sources is not None:
        codes, source_names = _source_codes(sources, num_examples)
    skips = per_source_setting(skip, "skip", source_names, minimum=0)
    windows_m = per_source_setting(window, "window", source_names, minimum=1)
    label_groups = _classification_groups(classification, source_names)
    if any(label_groups) and positive_texts is None:
        raise ConfigError("classification sources need positive_texts (their class labels)")
    if not 0.0 < label_fraction <= 1.0:
        raise ConfigError(f"label_fraction must be in (0, 1], got {label_fraction}")
    text_ids = _text_ids(positive_texts, num_examples) if positive_texts is not None else None
    groups = (
        [np.arange(num_examples)]
        if codes is None
        else [np.flatnonzero(codes == c) for c in range(len(source_names))]
    )
    spans = [effective_window(p, m, count_self) for p, m in zip(skips, windows_m)]

    width = max(max(w for _, w in spans), 1)
    windows = np.full((num_examples, width), -1, dtype=np.int32)
    skipped_width = max(start + w for start, w in spans)
    skipped_rows = np.full((num_examples, max(skipped_width, 1)), -1, dtype=np.int32)
    label_graphs: list[sp.csr_array] = []
    recalls: list[float] = []
    window_recalls: list[float] = []
    window_hardness: list[float] = []
    knn_infos: list[dict[str, Any]] = []
    for group_index, ids in enumerate(groups):
        whole = len(groups) == 1
        if whole:
            q_part, p_part = query_emb, positive_emb
        elif (blocked or neighbor_search is not None) and not label_groups[group_index]:
            # Read on demand, block by block: the key-block bound then holds per source group too (and a
            # replaced search, e.g. a rank's ring shard, reads only the rows it needs).
            q_part, p_part = RowSubset(_as_numpy(query_emb), ids), RowSubset(_as_numpy(positive_emb), ids)
        else:
            q_part, p_part = _as_numpy(query_emb)[ids], _as_numpy(positive_emb)[ids]
        if label_groups[group_index]:
            with timer.stage("labels"):
                local_window, local_skipped, local_graph = _label_window(
                    q_part, p_part, text_ids[ids], label_fraction, windows_m[group_index], normalize
                )
            _put_rows(windows, ids, local_window)
            _put_rows(skipped_rows, ids, local_skipped)
            rows, cols = local_graph.nonzero()
            label_graphs.append(
                sp.csr_array(
                    (np.ones(rows.size, dtype=np.int8), (ids[rows], ids[cols])), shape=(num_examples,) * 2
                )
            )
            continue
        group_skip, group_window = spans[group_index]
        k = min(group_skip + group_window, len(ids) - 1)
        search = functools.partial(
            _group_knn, q_part, p_part, backend=knn, normalize=normalize, device=device, chunk_size=chunk_size,
            seed=seed, show_progress=show_progress, precision=precision, key_block_size=key_block_size,
            memory_budget=memory_budget,
        )  # fmt: skip
        if k <= group_skip:  # too few examples in this group for any rank past the skipped ones
            if k > 0:
                with timer.stage("knn"):
                    result = search(k, faiss_options=faiss_options)
                _put_rows(skipped_rows, ids, np.asarray(result.indices, dtype=np.int64))
            continue
        with timer.stage("knn"):
            knn_options = _faiss_options(knn, faiss_options, recall_target, group_skip, k)
            if neighbor_search is not None:
                result = neighbor_search(q_part, p_part, k, ids, knn_options)
            else:
                result = search(k, faiss_options=knn_options)
        knn_infos.append(result.info)
        if knn != "exact" and recall_sample > 0:
            with timer.stage("knn_recall"):
                report = recall_report(
                    result,
                    q_part,
                    p_part,
                    ranges={"topk": (0, k), "window": (group_skip, k)},
                    sample=recall_sample,
                    exclude_self=True,
                    normalize=normalize,
                    seed=seed,
                    device=device,
                    hardness=(group_skip, k),
                )
                recalls.append(report["topk"])
                window_recalls.append(report["window"])
                window_hardness.append(report["hardness"])
        with timer.stage("window"):
            local = _filtered_window(
                result,
                q_part,
                p_part,
                group_skip,
                group_window,
                normalize,
                text_ids[ids] if text_ids is not None else None,
                absolute_margin,
                relative_margin,
                max_score,
            )
            _put_rows(windows, ids, local)
            filtered = not (
                text_ids is None and absolute_margin is None and relative_margin is None and max_score is None
            )
            _put_skipped(skipped_rows, ids, result.indices, local, group_skip, filtered)
        del result

    with timer.stage("graph"):
        directed_window = window_matrix(windows, num_examples)
        if label_graphs:
            retrieval_rows = windows.copy()
            retrieval_rows[np.concatenate([g for g, lab in zip(groups, label_groups) if lab])] = -1
            directed = window_matrix(retrieval_rows, num_examples)
            for graph in label_graphs:
                directed = directed + graph
            directed = sp.csr_array(directed, dtype=np.int8)
            directed.sort_indices()
        else:
            directed = directed_window
        mutual = mutual_graph(directed)
        g_stats = graph_stats(directed, mutual)
        # Distinct per row already: top ranks and window ranks of one kNN row never repeat an id.
        skipped = window_matrix(skipped_rows, num_examples)
    del windows, skipped_rows
    if directed.nnz == 0:
        warnings.warn(
            f"B3: the rank-window graph of {num_examples} examples has no edges (skip={skip}, "
            f"window={window}, margins and max_score filtered everything): the plan's batches are random",
            stacklevel=2,
        )

    with timer.stage("partition"):
        clusters, remainder, cluster_codes, remainder_codes, p_stats = _partition_groups(
            mutual, groups, cluster_size, seed, codes, community
        )

    with timer.stage("hardness"):
        random_groups = np.random.default_rng(seed).permutation(num_examples)
        random_groups = random_groups[: len(clusters) * cluster_size].reshape(-1, cluster_size)
        hardness = {
            "cluster_mean_sim": cluster_hardness(query_emb, positive_emb, clusters, normalize=normalize),
            "random_mean_sim": cluster_hardness(query_emb, positive_emb, random_groups, normalize=normalize),
        }

    params = {
        "method": "b3",
        "batch_size": int(batch_size),
        "cluster_size": int(cluster_size),
        "skip": _setting_param(skips, source_names),
        "window": _setting_param(windows_m, source_names),
        "count_self": bool(count_self),
        "community": community,
        "metis_mode": metis_mode(community),
        "classification": [n for n, lab in zip(source_names or ["*"], label_groups) if lab],
        "label_fraction": float(label_fraction),
        "seed": int(seed),
        "knn": knn,
        "normalize": bool(normalize),
        "same_source": bool(same_source),
        "per_source": codes is not None,
        "filter_same_text": positive_texts is not None,
        "absolute_margin": absolute_margin,
        "relative_margin": relative_margin,
        "max_score": max_score,
        "faiss_options": dict(faiss_options or {}),
        "precision": precision,
        "recall_target": recall_target,
    }
    # Recorded only when given (a re-mine uses them again); they bound memory, the plan is the same.
    params.update({k: v for k, v in zip(KEY_BLOCK_OPTIONS, (key_block_size, memory_budget)) if v is not None})
    stats = {
        "stages": timer.as_dict(),
        "total_seconds": round(time.perf_counter() - started, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "graph": g_stats,
        "partition": p_stats,
        "hardness": hardness,
        "num_clusters": len(clusters),
        "remainder": int(remainder.size),
    }
    if recalls:
        stats["knn_recall"] = float(np.mean(recalls))
        stats["knn_window_recall"] = float(np.mean(window_recalls))
        stats["knn_window_hardness"] = float(np.mean(window_hardness))
    if knn_infos:
        stats["knn_info"] = knn_infos[0] if len(knn_infos) == 1 else knn_infos
    return BatchPlan(
        clusters=clusters,
        remainder=remainder,
        num_examples=num_examples,
        params=params,
        hashes=hashes,
        stats=stats,
        cluster_sources=cluster_codes,
        remainder_sources=remainder_codes,
        source_names=source_names,
        neighbors=mutual if store_neighbors else None,
        window=directed_window if store_window else None,
        skipped=skipped if store_window else None,
    )


def _faiss_options(
    backend: str, options: dict[str, int] | None, recall_target: float | None, skip: int, k: int
) -> dict[str, Any]:
    """faiss options with the search effort calibrated to the window recall unless set explicitly."""
    merged: dict[str, Any] = dict(options or {})
    explicit = {"ivf": "nprobe", "ivf_torch": "nprobe", "hnsw": "ef_search"}.get(backend)
    if explicit and recall_target is not None and explicit not in merged:
        merged.setdefault("recall_target", recall_target)
        merged.setdefault("recall_columns", (min(skip, k - 1), k))
    return merged


def _group_knn(
    query: Any,
    positive: Any,
    k: int,
    backend: str,
    normalize: bool,
    device: Any,
    chunk_size: int | None,
    faiss_options: dict[str, Any] | None,
    seed: int,
    show_progress: bool | None,
    precision: str = "auto",
    key_block_size: int | str | None = None,
    memory_budget: int | str | None = None,
) -> KnnResult:
    if backend == "exact":
        return run_knn(
            query,
            positive,
            k,
            backend="exact",
            exclude_self=True,
            normalize=normalize,
            device=device,
            chunk_size=chunk_size,
            precision=precision,
            key_block_size=key_block_size,
            memory_budget=memory_budget,
            show_progress=show_progress,
        )
    if key_block_size is not None or memory_budget is not None:
        raise ConfigError(f"key_block_size and memory_budget apply to knn='exact' only, got knn={backend!r}")
    options = dict(faiss_options or {})
    if backend in ("ivf", "ivf_torch"):
        options.setdefault("seed", seed)
    return run_knn(
        query,
        positive,
        k,
        backend=backend,
        exclude_self=True,
        normalize=normalize,
        device=device,
        precision=precision,
        show_progress=show_progress,
        **options,
    )


def _filtered_window(
    result: KnnResult,
    query: Any,
    positive: Any,
    skip: int,
    window: int,
    normalize: bool,
    text_ids: np.ndarray | None,
    absolute_margin: float | None,
    relative_margin: float | None,
    max_score: float | None,
) -> np.ndarray:
    indices = rank_window(result.indices, skip, window)
    scores = rank_window(result.scores, skip, window)
    positive_scores = None
    if absolute_margin is not None or relative_margin is not None:
        positive_scores = _positive_scores(_as_numpy(query), _as_numpy(positive), normalize)
    if positive_scores is None and max_score is None and text_ids is None:
        return indices  # a view of the kNN's neighbours: an int64 copy took 800 MB at 1M × 100
    return filter_window(
        indices,
        scores,
        positive_scores=positive_scores,
        absolute_margin=absolute_margin,
        relative_margin=relative_margin,
        max_score=max_score,
        text_ids=text_ids,
    )


def _partition_groups(
    mutual: Any,
    groups: list[np.ndarray],
    cluster_size: int,
    seed: int,
    codes: np.ndarray | None,
    community: str = "metis",
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, dict[str, float]]:
    clusters, remainders, cluster_codes, remainder_codes = [], [], [], []
    totals: dict[str, float] = {}
    for code, ids in enumerate(groups):
        sub = mutual if len(groups) == 1 else mutual[ids][:, ids]
        part = balanced_clusters(sub, cluster_size, seed=seed, community=community)
        clusters.append(ids[part.clusters])
        remainders.append(ids[part.remainder])
        cluster_codes.append(np.full(len(part.clusters), code, dtype=np.int32))
        remainder_codes.append(np.full(part.remainder.size, code, dtype=np.int32))
        for key, value in part.stats.items():
            if key in ("metis_min_part",):
                totals[key] = min(totals.get(key, value), value)
            elif key in ("metis_max_part",):
                totals[key] = max(totals.get(key, value), value)
            elif key != "within_edge_fraction":
                totals[key] = totals.get(key, 0) + value
    edges = int(mutual.nnz // 2)
    totals["within_edge_fraction"] = (1.0 - totals.get("cut", 0) / edges) if edges else 0.0
    all_clusters = np.concatenate(clusters).reshape(-1, cluster_size)
    all_remainder = np.concatenate(remainders)
    if codes is None:
        return all_clusters, all_remainder, None, None, totals
    return all_clusters, all_remainder, np.concatenate(cluster_codes), np.concatenate(remainder_codes), totals


def _put_skipped(
    target: np.ndarray, ids: np.ndarray, ranked: np.ndarray, local: np.ndarray, skip: int, filtered: bool
) -> None:
    """One group's likely false negatives into ``target``: its top ``skip`` ranks, then (with filters) the
    window candidates the filters dropped.

    Works on views of the kNN's neighbours in their own dtype: the int64 copy and concatenation this
    replaced held ~3 GB at 1M × 130 and made the window stage the mine's memory peak. Without filters the
    window drops nothing, and ``target`` is already -1 there.
    """
    ranked = np.asarray(ranked)
    _put_rows(target, ids, ranked[:, :skip])
    if filtered:
        dropped = np.where(local < 0, ranked[:, skip : skip + local.shape[1]], -1)
        _put_rows(target[:, skip:], ids, dropped)


def _put_rows(target: np.ndarray, ids: np.ndarray, local: np.ndarray) -> None:
    """Write group-local neighbour ids (-1 = none) as example ids into ``target[ids, :width]``."""
    local = np.asarray(local)
    width = min(local.shape[1], target.shape[1]) if local.ndim == 2 else 0
    if width == 0:
        return
    local = local[:, :width]
    if len(ids) == len(target) and np.array_equal(ids, np.arange(len(ids))):
        target[:, :width] = local  # one group of all examples: local ids are example ids (1.6 s less at 100k)
        return
    local = local.astype(np.int64, copy=False)
    target[ids, :width] = np.where(local >= 0, ids[np.maximum(local, 0)], -1)


def _setting_param(values: list[int], source_names: list[str] | None) -> int | dict[str, int]:
    if source_names is None or len(set(values)) == 1:
        return int(values[0])
    return dict(zip(source_names, values))


def _classification_groups(
    classification: bool | Sequence[str], source_names: list[str] | None
) -> list[bool]:
    groups = source_names if source_names is not None else ["*"]
    if isinstance(classification, bool):
        return [classification] * len(groups)
    wanted = {str(name) for name in classification}
    unknown = sorted(wanted - set(source_names or []))
    if unknown:
        raise ConfigError(
            f"classification: no source named {', '.join(unknown)} "
            f"(sources: {', '.join(source_names or []) or 'none'})"
        )
    return [name in wanted for name in groups]


def _label_window(
    query: Any,
    positive: Any,
    labels: np.ndarray,
    fraction: float,
    window: int,
    normalize: bool,
    chunk: int = 4096,
) -> tuple[np.ndarray, np.ndarray, sp.csr_array]:
    """Label-level B3 for one classification source (group-local ids).

    Returns (window (n, w): one example per label of each query's first ``w`` non-gold labels; skipped
    (n, 1): the example standing for the gold label; directed graph (n, n): i → every j whose label is
    among i's top ``ceil(fraction · L)`` non-gold labels).
    """
    names, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    num_labels, n = names.size, len(labels)
    top = min(max(1, math.ceil(fraction * num_labels)), num_labels - 1)
    if top < 1:  # a single label: nothing to link
        empty = sp.csr_array((n, n), dtype=np.int8)
        return np.full((n, 1), -1), first[inverse][:, None], empty
    cpu = torch.device("cpu")
    label_emb = as_tensor(_as_numpy(positive)[first], cpu)
    if normalize:
        label_emb = torch.nn.functional.normalize(label_emb, dim=1)
    ranked = np.empty((n, top), dtype=np.int64)
    q_all = _as_numpy(query)
    for start in range(0, n, chunk):
        q = as_tensor(q_all[start : start + chunk], cpu)
        if normalize:
            q = torch.nn.functional.normalize(q, dim=1)
        scores = q @ label_emb.T
        gold = torch.as_tensor(inverse[start : start + len(q)])
        scores[torch.arange(len(q)), gold] = -torch.inf  # "filter out the golden label"
        ranked[start : start + len(q)] = torch.topk(scores, top, dim=1).indices.numpy()
    rows = np.repeat(np.arange(n), top)
    chosen = sp.csr_array(
        (np.ones(rows.size, dtype=np.int8), (rows, ranked.reshape(-1))), shape=(n, num_labels)
    )
    onehot = sp.csr_array((np.ones(n, dtype=np.int8), (np.arange(n), inverse)), shape=(n, num_labels))
    graph = sp.csr_array(chosen.astype(np.int32) @ onehot.T.astype(np.int32), dtype=np.int8)
    graph.sort_indices()
    pool = first[ranked[:, : min(window, top)]]
    return pool, first[inverse][:, None], graph
