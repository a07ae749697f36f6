"""Spherical k-means (IVF centroids): finds separated clusters, unit centroids, empty clusters split,
the same bits at any thread count, and centroids as good as faiss's where faiss is installed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hardbatch.errors import ConfigError
from hardbatch.graph.kmeans import spherical_kmeans


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _topics(n=3000, d=24, topics=12, noise=0.35, seed=0):
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(topics, d)))
    label = rng.integers(0, topics, n)
    return _unit(centres[label] + noise * rng.normal(size=(n, d)) / np.sqrt(d)), label, centres


def test_separated_topics_are_found_with_unit_centroids():
    points, label, centres = _topics(topics=5)
    # Lloyd's from random points may settle with two centroids in one topic (faiss's too, 3 of the first 6
    # seeds here): seed 1 starts where it converges; test_as_good_as_faiss_kmeans covers quality over seeds.
    centroids = spherical_kmeans(points, 5, seed=1).numpy()
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
    # Every topic centre has a centroid within a small angle, and the points go to their topic's centroid.
    nearest = (centres @ centroids.T).argmax(axis=1)
    assert len(set(nearest.tolist())) == 5 and (centres @ centroids.T).max(axis=1).min() > 0.99
    assigned = (points @ centroids.T).argmax(axis=1)
    assert (assigned == nearest[label]).mean() > 0.99


def test_an_empty_cluster_takes_half_of_a_large_one():
    # Two directions, each repeated 50 times, for 4 centroids: at least two start as copies of others and
    # get no points (ties go to the lower index); each must be split off a cluster, never left a zero vector.
    points = _unit(np.eye(6)[:2].repeat(50, axis=0) + 0.1)
    centroids = spherical_kmeans(points, 4, iterations=3, seed=1).numpy()
    assert np.all(np.isfinite(centroids))
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
    assert len({tuple(row) for row in centroids}) == 4  # all distinct
    assert (points @ centroids.T).max(axis=1).min() > 0.999  # both directions kept


def test_same_bits_at_any_thread_count_and_seed_matters():
    points, _, _ = _topics(n=5000, d=32, topics=40, noise=1.0)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = spherical_kmeans(points, 40, seed=5).numpy()
        torch.set_num_threads(max(2, threads))
        many = spherical_kmeans(points, 40, seed=5).numpy()
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(one, many)
    assert not np.array_equal(one, spherical_kmeans(points, 40, seed=6).numpy())


def test_bad_sizes_are_config_errors():
    points, _, _ = _topics(n=10)
    with pytest.raises(ConfigError, match="11 clusters, 10 points"):
        spherical_kmeans(points, 11)
    with pytest.raises(ConfigError, match="0 clusters"):
        spherical_kmeans(points, 0)


def test_as_good_as_faiss_kmeans():
    faiss = pytest.importorskip("faiss")
    points, _, _ = _topics(n=20000, d=48, topics=200, noise=1.2, seed=4)
    ours, theirs = [], []
    for seed in range(3):
        ours.append(float((points @ spherical_kmeans(points, 100, seed=seed).numpy().T).max(axis=1).mean()))
        kmeans = faiss.Kmeans(48, 100, niter=10, spherical=True, seed=seed, verbose=False)
        kmeans.train(points)
        theirs.append(float((points @ kmeans.centroids.T).max(axis=1).mean()))
    # Mean inner product of a point with its centroid (the spherical k-means objective), over 3 seeds.
    assert np.mean(ours) >= np.mean(theirs) - 0.005, (ours, theirs)


def _shared_worker(rank: int, world: int, init_file: str, out: str) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    import hardbatch.graph.kmeans as kmeans
    from hardbatch.distributed import WorkSplit

    torch.set_num_threads(1)
    kmeans._ASSIGN_POINTS, kmeans._SUM_CLUSTERS = 500, 7  # blocks for every rank at this size
    assigned = []
    nearest = kmeans._nearest
    kmeans._nearest = lambda points, centroids: assigned.append(len(points)) or nearest(points, centroids)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))  # fmt: skip
    try:
        points, _, _ = _topics(n=3000, d=16, topics=30, noise=1.0)
        shared = spherical_kmeans(
            points, 30, iterations=4, seed=2, split=WorkSplit("k-means", across_ranks=True)
        )
        shares: list = [None] * world
        dist.all_gather_object(shares, sum(assigned))
        if rank == 0:
            alone = spherical_kmeans(points, 30, iterations=4, seed=2)
            np.savez(out, shared=shared.numpy(), alone=alone.numpy(), shares=np.array(shares))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_ranks_share_the_iterations_and_get_the_one_process_centroids(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "centroids.npz")
    mp.spawn(_shared_worker, args=(2, str(tmp_path / "rendezvous"), out), nprocs=2, join=True)
    got = np.load(out)
    np.testing.assert_array_equal(got["shared"], got["alone"])
    assert got["shares"].sum() == 4 * 3000 and got["shares"].min() > 0  # every point once per iteration
