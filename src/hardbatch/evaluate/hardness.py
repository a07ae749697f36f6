"""Batch hardness under a teacher: how much harder a sampler's batches are than random ones.

For a batch B with query embeddings Q_B and positive embeddings P_B (teacher, L2-normalised) the b × b
block S = Q_B · P_Bᵀ holds the positives on its diagonal and the in-batch negatives off it. Per batch we
measure

* the similarity of the in-batch negatives (per row: mean and hardest; summarised by mean and
  percentiles over rows),
* the in-batch InfoNCE loss ``CE(scale · S, diagonal)`` (higher = harder batch; depends on b, so always
  compare at equal batch sizes),
* in-batch recall@1: the fraction of queries whose own positive beats every in-batch negative
  (lower = harder),

and, to see *which* pairs a strategy groups, the fraction of teacher nearest-neighbour pairs (query i →
positive j among its top-k, j ≠ i) whose two examples share a batch, compared with the (b - 1) / (N - 1)
a random assignment achieves.

Only b × b blocks are ever formed (never N × N): batches of equal size are stacked and processed in groups
with one batched matmul. Time O(N · b · d), memory O(group · b · (b + d)). The neighbour pairs need one
chunked O(N² · d) pass (:func:`teacher_neighbor_pairs`), memory O(chunk_size · N + N · k).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hardbatch.errors import ConfigError
from hardbatch.graph.knn import knn_exact
from hardbatch.validation import check_embeddings

__all__ = [
    "BatchHardness",
    "batch_hardness",
    "compare_batchings",
    "group_stats",
    "pair_coverage",
    "plot_comparison",
    "random_batches_like",
    "summarize_hardness",
    "teacher_neighbor_pairs",
]

#: Percentiles reported for per-row metrics.
PERCENTILES = (10, 50, 90, 99)


@dataclass
class BatchHardness:
    """Per-row and per-batch hardness of a set of batches.

    Attributes:
        row_neg_mean: (M,) mean similarity of each batched query to the in-batch negatives.
        row_neg_max: (M,) similarity of each batched query to its hardest in-batch negative.
        row_correct: (M,) bool, the query's own positive ranks first in its batch (in-batch recall@1).
        batch_loss: (num_batches,) in-batch InfoNCE loss of every batch (batches of size 1 excluded).
        batch_neg_mean: (num_batches,) mean negative similarity of every batch.
        batch_sizes: (num_batches,) sizes.
    """

    row_neg_mean: np.ndarray
    row_neg_max: np.ndarray
    row_correct: np.ndarray
    batch_loss: np.ndarray
    batch_neg_mean: np.ndarray
    batch_sizes: np.ndarray


def _normalized(array: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array)
    return torch.nn.functional.normalize(tensor.to(device=device, dtype=torch.float32), dim=1)


def batch_hardness(
    query_emb: np.ndarray | torch.Tensor,
    positive_emb: np.ndarray | torch.Tensor,
    batches: Sequence[Sequence[int]],
    *,
    scale: float = 20.0,
    group_bytes: int = 64 << 20,
    device: str | torch.device = "cpu",
) -> BatchHardness:
    """Hardness of every batch under teacher embeddings (only b × b blocks are formed).

    Args:
        query_emb: (N, d) float teacher query embeddings (normalised here).
        positive_emb: (N, d) float teacher positive embeddings.
        batches: lists of example ids; batches of size 1 have no negatives and are skipped.
        scale: inverse temperature of the in-batch InfoNCE (20 = temperature 0.05, sentence-transformers'
            default).
        group_bytes: memory budget of one stacked group of batches.
        device: torch device.

    Returns:
        :class:`BatchHardness`.

    Example:
        >>> x = np.eye(4, dtype=np.float32)
        >>> h = batch_hardness(x, x, [[0, 1], [2, 3]])
        >>> h.row_neg_mean.tolist(), bool(h.row_correct.all())
        ([0.0, 0.0, 0.0, 0.0], True)
    """
    n = len(query_emb)
    check_embeddings(query_emb, "query embeddings")
    check_embeddings(positive_emb, "positive embeddings", rows=n, dim=query_emb.shape[1])
    dev = torch.device(device)
    by_size: dict[int, list[Sequence[int]]] = {}
    for batch in batches:
        if len(batch) > 1:
            by_size.setdefault(len(batch), []).append(batch)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("mean", "max", "correct", "loss", "bmean", "size")}
    dim = query_emb.shape[1]
    for size, same in by_size.items():
        index = np.asarray(same, dtype=np.int64)
        if index.min() < 0 or index.max() >= n:
            raise ConfigError(f"a batch holds an example id outside [0, {n})")
        per_group = max(1, group_bytes // (4 * size * (size + 2 * dim)))
        for start in range(0, len(index), per_group):
            ids = index[start : start + per_group]
            flat = ids.reshape(-1)
            q = _normalized(query_emb[flat], dev).view(len(ids), size, dim)
            p = _normalized(positive_emb[flat], dev).view(len(ids), size, dim)
            sims = torch.bmm(q, p.transpose(1, 2))  # (g, b, b): one block per batch
            eye = torch.eye(size, dtype=torch.bool, device=dev)
            negatives = sims.masked_fill(eye, float("-inf"))
            positives = sims.diagonal(dim1=1, dim2=2)
            neg_sum = sims.masked_fill(eye, 0.0).sum(dim=2)
            row_mean = neg_sum / (size - 1)
            row_max = negatives.max(dim=2).values
            loss = torch.nn.functional.cross_entropy(
                (scale * sims).reshape(-1, size),
                torch.arange(size, device=dev).repeat(len(ids)),
                reduction="none",
            ).view(len(ids), size)
            parts["mean"].append(row_mean.reshape(-1).cpu().numpy())
            parts["max"].append(row_max.reshape(-1).cpu().numpy())
            parts["correct"].append((positives > row_max).reshape(-1).cpu().numpy())
            parts["loss"].append(loss.mean(dim=1).cpu().numpy())
            parts["bmean"].append(row_mean.mean(dim=1).cpu().numpy())
            parts["size"].append(np.full(len(ids), size, dtype=np.int64))

    def cat(key: str, dtype: Any = np.float32) -> np.ndarray:
        return np.concatenate(parts[key]) if parts[key] else np.empty(0, dtype=dtype)

    return BatchHardness(
        row_neg_mean=cat("mean"),
        row_neg_max=cat("max"),
        row_correct=cat("correct", bool),
        batch_loss=cat("loss"),
        batch_neg_mean=cat("bmean"),
        batch_sizes=cat("size", np.int64),
    )


def summarize_hardness(hardness: BatchHardness) -> dict[str, float]:
    """Scalar summary: means and percentiles of the per-row metrics, mean batch loss, recall@1."""
    out: dict[str, float] = {
        "batches": int(hardness.batch_sizes.size),
        "rows": int(hardness.row_neg_mean.size),
    }
    if hardness.row_neg_mean.size == 0:
        return out
    out["neg_sim_mean"] = float(hardness.row_neg_mean.mean())
    for pct in PERCENTILES:
        out[f"neg_sim_p{pct}"] = float(np.percentile(hardness.row_neg_mean, pct))
    out["hardest_neg_sim_mean"] = float(hardness.row_neg_max.mean())
    for pct in PERCENTILES:
        out[f"hardest_neg_sim_p{pct}"] = float(np.percentile(hardness.row_neg_max, pct))
    out["infonce"] = float(hardness.batch_loss.mean())
    out["recall@1"] = float(hardness.row_correct.mean())
    return out


def random_batches_like(
    batches: Sequence[Sequence[int]], num_examples: int, *, seed: int = 0
) -> list[np.ndarray]:
    """Random batches with the same sizes (drawn from all ``num_examples``, without replacement).

    Example:
        >>> [len(b) for b in random_batches_like([[0, 1, 2], [3]], 10)]
        [3, 1]
    """
    sizes = [len(b) for b in batches]
    if sum(sizes) > num_examples:
        raise ConfigError(f"the batches hold {sum(sizes)} examples but there are only {num_examples}")
    order = np.random.default_rng([int(seed), 0x4A4D]).permutation(num_examples)
    bounds = np.cumsum([0, *sizes])
    return [order[bounds[i] : bounds[i + 1]] for i in range(len(sizes))]


def teacher_neighbor_pairs(
    query_emb: np.ndarray | torch.Tensor,
    positive_emb: np.ndarray | torch.Tensor,
    k: int = 10,
    *,
    chunk_size: int = 1024,
    device: str | torch.device | None = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's top-k hard pairs: for every query i, the k positives j ≠ i most similar to it.

    Args:
        query_emb: (N, d) float array.
        positive_emb: (N, d) float array.
        k: neighbours per query (1 <= k < N).
        chunk_size: queries per similarity block.
        device: torch device.

    Returns:
        ``(rows, cols)``: (N · k,) int64 arrays of the pairs (i, j).

    Uses the shared exact kNN (:func:`hardbatch.graph.knn.knn_exact`: tie rule, bf16 where fast).
    Time O(N² · d), memory O(chunk_size · N + N · k).
    """
    n = len(query_emb)
    if not 1 <= k < n:
        raise ConfigError(f"k must lie in [1, {n - 1}], got {k}")
    result = knn_exact(
        query_emb,
        positive_emb,
        k,
        exclude_self=True,  # not its own positive
        chunk_size=chunk_size,
        device=device,
        normalize=True,
        show_progress=False,
    )
    cols = result.indices.astype(np.int64)
    return np.repeat(np.arange(n, dtype=np.int64), k), cols.reshape(-1)


def _batch_of(batches: Sequence[Sequence[int]], num_examples: int) -> np.ndarray:
    batch_of = np.full(num_examples, -1, dtype=np.int64)
    for index, batch in enumerate(batches):
        batch_of[np.asarray(batch, dtype=np.int64)] = index
    return batch_of


def pair_coverage(
    rows: np.ndarray, cols: np.ndarray, batches: Sequence[Sequence[int]], num_examples: int
) -> float:
    """Fraction of the pairs (rows[t], cols[t]), rows ≠ cols, whose examples share a batch (NaN: no pairs).

    Example:
        >>> pair_coverage(np.array([0, 0]), np.array([1, 2]), [[0, 1], [2, 3]], 4)
        0.5
    """
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    keep = rows != cols
    if not keep.any():
        return float("nan")
    batch_of = _batch_of(batches, num_examples)
    a, b = batch_of[rows[keep]], batch_of[cols[keep]]
    return float(((a == b) & (a >= 0)).mean())


def group_stats(labels: np.ndarray, batches: Sequence[Sequence[int]]) -> dict[str, Any]:
    """How a grouping (topic clusters, sources, B3 clusters) relates to the batches.

    Args:
        labels: (N,) group label of every example; negative = no group.
        batches: the batches.

    Returns:
        ``{"num_groups", "group_sizes" (sorted sizes), "groups_per_batch" (distinct labelled groups in
        every batch), "groups_per_batch_mean"}``.
    """
    labels = np.asarray(labels)
    valid = labels[labels >= 0]
    _, sizes = np.unique(valid, return_counts=True)
    per_batch = [
        int(np.unique(lab[lab >= 0]).size) for lab in (labels[np.asarray(b, dtype=np.int64)] for b in batches)
    ]
    return {
        "num_groups": int(sizes.size),
        "group_sizes": np.sort(sizes).tolist(),
        "groups_per_batch": per_batch,
        "groups_per_batch_mean": float(np.mean(per_batch)) if per_batch else 0.0,
    }


#: Histogram bins (cosine similarity) stored in comparison reports for plotting.
HIST_BINS = np.linspace(-0.2, 1.0, 61)


def _histogram(values: np.ndarray) -> list[int]:
    return np.histogram(np.clip(values, HIST_BINS[0], HIST_BINS[-1]), bins=HIST_BINS)[0].tolist()


def compare_batchings(
    query_emb: np.ndarray | torch.Tensor,
    positive_emb: np.ndarray | torch.Tensor,
    batchings: dict[str, Sequence[Sequence[int]]],
    *,
    k: int = 10,
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    groups: dict[str, np.ndarray] | None = None,
    scale: float = 20.0,
    seed: int = 0,
    device: str | torch.device | None = "auto",
    texts: Sequence[str] | None = None,
    extras: dict[str, Sequence[Sequence[int]]] | None = None,
) -> dict[str, Any]:
    """Side-by-side hardness of several batchings of the same data, each against random batches of equal sizes.

    Args:
        query_emb: (N, d) teacher query embeddings.
        positive_emb: (N, d) teacher positive embeddings.
        batchings: strategy name → its batches (one epoch).
        k: teacher neighbours per query for the pair-coverage metric (0 disables the O(N² d) pass).
        pairs: extra pair sets per strategy, e.g. ``{"b3": (rows, cols)}`` for a B3 plan's window edges;
            their coverage is reported as ``own_pair_coverage``.
        groups: strategy name → (N,) group labels (topic clusters, sources, B3 clusters) for group stats.
        scale: InfoNCE inverse temperature.
        seed: seed of the random reference batches.
        device: device of the neighbour search.
        texts: (N,) positive texts; with them every strategy (and its random reference) also gets
            ``false_negatives`` (:func:`hardbatch.evaluate.false_negatives.false_negative_stats`: the share
            of in-batch negatives the teacher scores above the query's own positive, and of exact duplicate
            texts).
        extras: strategy name → per batch, the ids of its extra negative columns (B3++), included in the
            false-negative statistics.

    Returns:
        ``{"num_examples", "k", "strategies": {name: {summary metrics, "random": {...},
        "knn_pair_coverage", "random_knn_pair_coverage", "hist_neg_mean", "hist_hardest_neg", "batch_sizes",
        "groups"...}}, "hist_bins"}``.

    Time O(N · b · d) per strategy plus O(N² · d) once for the neighbour pairs.
    """
    n = len(query_emb)
    neighbors = teacher_neighbor_pairs(query_emb, positive_emb, k, device=device) if k else None
    report: dict[str, Any] = {"num_examples": n, "k": k, "hist_bins": HIST_BINS.tolist(), "strategies": {}}
    for name, batches in batchings.items():
        batches = [list(map(int, b)) for b in batches]
        hard = batch_hardness(query_emb, positive_emb, batches, scale=scale)
        reference = random_batches_like(batches, n, seed=seed)
        rand = batch_hardness(query_emb, positive_emb, reference, scale=scale)
        entry: dict[str, Any] = summarize_hardness(hard)
        entry["random"] = summarize_hardness(rand)
        entry["examples_batched"] = int(sum(len(b) for b in batches))
        sizes, counts = np.unique([len(b) for b in batches], return_counts=True)
        entry["batch_sizes"] = {int(s): int(c) for s, c in zip(sizes, counts)}
        entry["hist_neg_mean"] = _histogram(hard.row_neg_mean)
        entry["hist_hardest_neg"] = _histogram(hard.row_neg_max)
        entry["random"]["hist_neg_mean"] = _histogram(rand.row_neg_mean)
        entry["random"]["hist_hardest_neg"] = _histogram(rand.row_neg_max)
        if neighbors is not None:
            entry["knn_pair_coverage"] = pair_coverage(*neighbors, batches, n)
            entry["random_knn_pair_coverage"] = pair_coverage(*neighbors, reference, n)
        if pairs and name in pairs:
            entry["own_pair_coverage"] = pair_coverage(*pairs[name], batches, n)
            entry["random_own_pair_coverage"] = pair_coverage(*pairs[name], reference, n)
        if groups and name in groups:
            entry["groups"] = group_stats(groups[name], batches)
        if texts is not None or (extras and name in extras):
            from hardbatch.evaluate.false_negatives import false_negative_stats

            extra = extras.get(name) if extras else None
            entry["false_negatives"] = false_negative_stats(
                query_emb, positive_emb, batches, texts=texts, extra=extra
            )
            entry["random"]["false_negatives"] = false_negative_stats(
                query_emb, positive_emb, reference, texts=texts
            )
        report["strategies"][name] = entry
    return report


def plot_comparison(report: dict[str, Any], path: str | Any) -> None:
    """Eight-panel PNG of a :func:`compare_batchings` report (matplotlib, Agg backend; written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hardbatch.colors import legend_outside, strategy_color
    from hardbatch.io import atomic_path

    names = list(report["strategies"])
    entries = [report["strategies"][n] for n in names]
    centres = (np.asarray(report["hist_bins"][:-1]) + np.asarray(report["hist_bins"][1:])) / 2
    colors = [strategy_color(name) for name in names]
    reference = strategy_color("random")
    fig, axes = plt.subplots(2, 4, figsize=(24, 9), layout="constrained")
    for ax, key, title in (
        (axes[0, 0], "hist_neg_mean", "mean in-batch negative similarity (per query)"),
        (axes[0, 1], "hist_hardest_neg", "hardest in-batch negative similarity (per query)"),
    ):
        random_hist = np.asarray(entries[0]["random"][key], dtype=float)
        ax.plot(
            centres, random_hist / max(1, random_hist.sum()), "--", color=reference, label="random reference"
        )
        for name, entry, color in zip(names, entries, colors):
            hist = np.asarray(entry[key], dtype=float)
            ax.plot(centres, hist / max(1, hist.sum()), color=color, label=name)
        ax.set_title(title)
        ax.set_xlabel("cosine similarity (teacher)")
        legend_outside(ax)
    x = np.arange(len(names))
    for ax, key, title in (
        (axes[0, 2], "infonce", "in-batch InfoNCE (higher = harder)"),
        (axes[1, 0], "recall@1", "in-batch recall@1 (lower = harder)"),
    ):
        # Each strategy's bar in its own colour (named by the tick label), next to its random reference.
        ax.bar(x - 0.2, [e.get(key, np.nan) for e in entries], 0.4, color=colors)
        ax.bar(
            x + 0.2,
            [e["random"].get(key, np.nan) for e in entries],
            0.4,
            color=reference,
            alpha=0.45,
            label="random reference",
        )
        ax.set_xticks(x, names, rotation=25, ha="right")
        ax.set_title(title)
        legend_outside(ax)
    ax = axes[1, 1]
    if report.get("k"):
        ax.bar(
            x - 0.2,
            [e.get("knn_pair_coverage", np.nan) for e in entries],
            0.4,
            color=colors,
        )
        ax.bar(x + 0.2, [e.get("random_knn_pair_coverage", np.nan) for e in entries], 0.4, color=reference,
               alpha=0.45, label="random reference")  # fmt: skip
        ax.set_yscale("log")
        ax.set_xticks(x, names, rotation=25, ha="right")
        legend_outside(ax)
    ax.set_title(f"teacher top-{report.get('k')} pairs inside one batch")
    ax = axes[1, 2]
    for name, entry, color in zip(names, entries, colors):
        if "groups" in entry and entry["groups"]["groups_per_batch"]:
            values = np.asarray(entry["groups"]["groups_per_batch"])
            ax.hist(values, bins=np.arange(values.max() + 2) - 0.5, alpha=0.5, color=color, label=name)
    ax.set_title("distinct clusters / sources per batch")
    ax.set_xlabel("groups in a batch")
    if ax.get_legend_handles_labels()[0]:
        legend_outside(ax)
    for ax, key, title in (
        (axes[0, 3], "above_positive", "in-batch negatives above the positive (teacher)"),
        (axes[1, 3], "duplicate_text", "in-batch negatives with the positive's exact text"),
    ):
        fn = [e.get("false_negatives", {}) for e in entries]
        ax.bar(x - 0.3, [f.get(key, np.nan) for f in fn], 0.3, color=colors, label="in batch")
        ax.bar(x, [f.get(f"extra_{key}", np.nan) for f in fn], 0.3, color=colors, alpha=0.5, hatch="//",
               label="extra hard-negative columns")  # fmt: skip
        ax.bar(x + 0.3, [e["random"].get("false_negatives", {}).get(key, np.nan) for e in entries], 0.3,
               color=reference, alpha=0.4, label="random reference")  # fmt: skip
        ax.set_xticks(x, names, rotation=25, ha="right")
        ax.set_title(title + " (false-negative proxy)", fontsize=9)
        legend_outside(ax)
    fig.suptitle(f"Batch hardness under the teacher — N={report['num_examples']}")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
