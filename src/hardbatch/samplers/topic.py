"""``TopicBatchSampler``: TAS-B style topic batches — every batch from one k-means cluster of queries.

TAS-Balanced (Hofstätter et al., SIGIR 2021) clusters the training queries once, with embeddings from a
baseline (teacher) retriever, and composes each batch from a single cluster, so the in-batch negatives
share a topic. Here the clustering is spherical k-means on the L2-normalised teacher query embeddings:
``faiss.Kmeans`` when faiss is installed (fast), else scikit-learn's ``MiniBatchKMeans``. It runs once,
lazily, seeded by ``seed`` alone, so every epoch and every rank use the same clusters; batch composition
then changes every epoch (see :class:`~hardbatch.samplers.grouped.GroupedBatchSampler`).

Cluster leftovers (fewer than ``batch_size × world_size`` examples) are pooled into mixed batches by
default (``leftover="mix"``) in the order of the clusters' projection on the centroids' first principal
axis, so a mixed batch still tends to join neighbouring topics.

Cost: k-means O(N · k · d · iterations) once (faiss subsamples 256 points per centroid for training);
O(N) per epoch.

References:
    Sebastian Hofstätter, Sheng-Chieh Lin, Jheng-Hong Yang, Jimmy Lin, Allan Hanbury. Efficiently
    Teaching an Effective Dense Retriever with Balanced Topic Aware Sampling. SIGIR 2021.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from hardbatch.embed.cache import as_embeddings
from hardbatch.errors import ConfigError
from hardbatch.samplers.grouped import GroupedBatchSampler, Leftover

if TYPE_CHECKING:
    from hardbatch.samplers.inputs import SamplerInputs

__all__ = ["TopicBatchSampler", "kmeans_labels"]

Backend = Literal["auto", "faiss", "sklearn"]


def kmeans_labels(
    embeddings: np.ndarray, n_clusters: int, *, seed: int = 0, backend: Backend = "auto", niter: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means: cluster id of every row and the (unit-norm) centroids.

    Args:
        embeddings: (N, d) float array.
        n_clusters: k, 1 <= k <= N.
        seed: k-means seed.
        backend: ``"faiss"`` (``faiss.Kmeans``), ``"sklearn"`` (``MiniBatchKMeans``) or ``"auto"`` (faiss
            if installed).
        niter: k-means iterations (faiss) / maximum passes (scikit-learn).

    Returns:
        ``(labels (N,) int64, centroids (k, d) float32)``.

    Example:
        >>> x = np.concatenate([np.ones((5, 2)), -np.ones((5, 2))]).astype(np.float32)
        >>> labels, _ = kmeans_labels(x, 2)
        >>> len(set(labels[:5])), len(set(labels[5:])), bool(labels[0] != labels[9])
        (1, 1, True)
    """
    if not 1 <= n_clusters <= len(embeddings):
        raise ConfigError(f"n_clusters must lie in [1, {len(embeddings)}], got {n_clusters}")
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if backend == "auto":
        try:
            import faiss

            backend = "faiss"
        except ImportError:
            backend = "sklearn"
    if backend == "faiss":
        from hardbatch.errors import require

        faiss = require("faiss", "faiss", "k-means with faiss")
        kmeans = faiss.Kmeans(
            x.shape[1], n_clusters, niter=niter, seed=int(seed), spherical=True, verbose=False
        )
        kmeans.train(x)
        _, assigned = kmeans.index.search(x, 1)
        centroids = np.asarray(kmeans.centroids, dtype=np.float32)
        return assigned[:, 0].astype(np.int64), centroids
    if backend != "sklearn":
        raise ConfigError(f"unknown k-means backend {backend!r} (faiss, sklearn or auto)")
    from sklearn.cluster import MiniBatchKMeans

    model = MiniBatchKMeans(
        n_clusters=n_clusters, random_state=int(seed), n_init=3, max_iter=niter, batch_size=4096
    )
    labels = model.fit_predict(x).astype(np.int64)
    centroids = model.cluster_centers_.astype(np.float32)
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return labels, centroids


class TopicBatchSampler(GroupedBatchSampler):
    """Each batch (each global batch under DDP) from one k-means topic cluster of teacher query embeddings.

    Args:
        dataset: the training dataset (only its length is used).
        batch_size, drop_last, valid_label_columns, generator, seed, num_examples, world_size: see
            :class:`~hardbatch.samplers.base.HardBatchSampler`.
        query_emb: (N, d) teacher query embeddings (array, tensor or ``.npy`` path).
        labels: (N,) precomputed cluster labels instead of embeddings.
        n_clusters: k; default ``max(1, N // (8 · batch_size · world_size))`` (about 8 global batches per
            cluster, the TAS-B ratio).
        backend: k-means backend ("auto", "faiss", "sklearn").
        leftover: ``"mix"`` (default) or ``"drop"`` for the cluster leftovers.

    Example:
        >>> emb = np.random.default_rng(0).normal(size=(256, 8)).astype(np.float32)
        >>> sampler = TopicBatchSampler(num_examples=256, batch_size=16, query_emb=emb, n_clusters=4)
        >>> len(list(sampler)) == len(sampler) == 16
        True
    """

    rng_salt = 0x70C

    def __init__(
        self,
        dataset: Sequence[Any] | None = None,
        batch_size: int = 32,
        *args: Any,
        query_emb: np.ndarray | torch.Tensor | str | os.PathLike[str] | None = None,
        labels: np.ndarray | Sequence[int] | None = None,
        n_clusters: int | None = None,
        backend: Backend = "auto",
        leftover: Leftover = "mix",
        **base: Any,
    ) -> None:
        super().__init__(dataset, batch_size, *args, leftover=leftover, **base)
        if (query_emb is None) == (labels is None):
            raise ConfigError("TopicBatchSampler needs exactly one of query_emb or labels")
        self._labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        if self._labels is not None and self._labels.shape != (self.num_examples,):
            raise ConfigError(f"labels: expected {self.num_examples} values, got shape {self._labels.shape}")
        self._query_emb = (
            None if query_emb is None else as_embeddings(query_emb, "query_emb", self.num_examples)
        )
        default_k = max(1, self.num_examples // (8 * self.batch_size * self.world_size))
        self.n_clusters = int(n_clusters) if n_clusters is not None else default_k
        self.backend = backend
        self._centroids: np.ndarray | None = None

    @classmethod
    def input_kwargs(cls, inputs: SamplerInputs, options: Mapping[str, Any]) -> dict[str, Any]:
        """Topics come from the teacher's query embeddings unless ``query_emb`` or ``labels`` is given."""
        if {"query_emb", "labels"} & set(options):
            return {}
        return {"query_emb": inputs.teacher_embeddings()[0]}

    def group_labels(self) -> np.ndarray:
        if self._labels is None:
            assert self._query_emb is not None
            self._labels, self._centroids = kmeans_labels(
                self._query_emb, self.n_clusters, seed=self.seed, backend=self.backend
            )
        return self._labels

    def group_order(self, labels: np.ndarray) -> np.ndarray:
        if self._centroids is None or len(self._centroids) < 2:
            return np.arange(len(labels))
        # Order topics along the centroids' main direction so pooled leftovers join nearby topics.
        centred = self._centroids - self._centroids.mean(axis=0)
        axis = np.linalg.svd(centred, full_matrices=False)[2][0]
        return np.argsort(centred[labels] @ axis, kind="stable")

    def get_config_dict(self) -> dict[str, Any]:
        return {**super().get_config_dict(), "n_clusters": self.n_clusters, "backend": self.backend}
