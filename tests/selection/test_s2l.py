"""S2L: balanced sampling by hand, k-means, NaN exclusion, stratification (docs/algorithms.md 2)."""

import numpy as np
import pytest

from lightning_less.selection.s2l import balanced_sample, kmeans_cluster, s2l_select


def _labels_with_sizes(sizes, seed=0):
    """Cluster id c repeated sizes[c] times, shuffled so clusters are not contiguous."""
    labels = np.concatenate([np.full(s, c) for c, s in enumerate(sizes)])
    return np.random.default_rng(seed).permutation(labels)


def _per_cluster(labels, selected, n_clusters):
    return np.bincount(labels[selected], minlength=n_clusters).tolist()


def test_balanced_sample_hand_example():
    # Cluster sizes: 0 -> 1, 1 -> 2 (both <= 2: set aside), 2 -> 3, 3 -> 5, 4 -> 10.
    labels = _labels_with_sizes([1, 2, 3, 5, 10])
    # Budget 12 over the 3 large clusters, smallest first:
    #   cluster 2: quota floor(12/3) = 4 >= 3, taken whole (3); remaining 9
    #   cluster 3: quota floor(9/2) = 4 < 5, draw 4;             remaining 5
    #   cluster 4: quota floor(5/1) = 5 < 10, draw 5;            remaining 0
    sel = balanced_sample(labels, 12, seed=0)
    assert _per_cluster(labels, sel, 5) == [0, 0, 3, 4, 5]
    # Budget 20: clusters 2, 3, 4 have quotas 6, 8, 12 and are all taken whole (18),
    # leaving 2 for the set-aside clusters, smallest first:
    #   cluster 0: quota floor(2/2) = 1 >= 1, whole;  cluster 1: quota 1 < 2, draw 1.
    sel = balanced_sample(labels, 20, seed=0)
    assert _per_cluster(labels, sel, 5) == [1, 1, 3, 5, 10]
    assert balanced_sample(labels, 21, seed=0).tolist() == list(range(21))


def test_balanced_sample_ties_visit_lower_cluster_id_first():
    # Two clusters of size 3, budget 5: the first visited gets floor(5/2) = 2, the other 3.
    labels = _labels_with_sizes([3, 3])
    assert _per_cluster(labels, balanced_sample(labels, 5, seed=1), 2) == [2, 3]
    labels = np.where(labels == 0, 7, 4)  # now the cluster with id 4 comes first
    assert np.bincount(labels[balanced_sample(labels, 5, seed=1)]).tolist()[4::3] == [2, 3]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balanced_sample_exact_unique_reproducible(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 30, size=500) ** 2 % 37  # uneven sizes, some tiny clusters
    for budget in (1, 7, 50, 123, 333, 499, 500):
        sel = balanced_sample(labels, budget, seed=seed)
        assert sel.size == budget and np.unique(sel).size == budget
        assert sel.min() >= 0 and sel.max() < 500
        assert np.array_equal(sel, balanced_sample(labels, budget, seed=seed))
    assert not np.array_equal(balanced_sample(labels, 100, seed=0), balanced_sample(labels, 100, seed=1))
    with pytest.raises(ValueError, match="budget"):
        balanced_sample(labels, 501, seed=0)


def _blobs(n_per=40, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0] * 6, [5.0] * 6, [10.0] * 6])
    x = np.concatenate([c + 0.1 * rng.standard_normal((n_per, 6)) for c in centres])
    return x, np.repeat(np.arange(3), n_per)


def test_kmeans_is_seeded_and_recovers_blobs():
    x, truth = _blobs()
    labels, info = kmeans_cluster(x, n_clusters=3, seed=0)
    assert info == {"n_clusters": 3, "n_clusters_requested": 3, "clamped": False, "backend": "faiss"}
    assert labels.shape == (120,) and labels.min() >= 0 and labels.max() < 3
    assert np.array_equal(labels, kmeans_cluster(x, n_clusters=3, seed=0)[0])
    # faiss starts from k random points (one try, as the reference), so it may stop in
    # a local optimum; scikit-learn's k-means++ start finds separated blobs reliably.
    sk, _ = kmeans_cluster(x, n_clusters=3, seed=0, backend="sklearn")
    assert len({(a, b) for a, b in zip(truth, sk)}) == 3  # same partition up to renaming


def test_kmeans_clamps_small_pools():
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    labels, info = kmeans_cluster(x, n_clusters=100)
    assert info["clamped"] and info["n_clusters"] == 5 and info["n_clusters_requested"] == 100
    assert labels.shape == (5,)


def test_s2l_excludes_nan_trajectories():
    x, _ = _blobs()
    x[[3, 50, 90]] = np.nan
    x[10, 2] = np.nan  # one missing checkpoint is enough
    sel, info = s2l_select(x, 60, n_clusters=10, seed=0)
    assert info["n_excluded"] == 4 and info["excluded_indices"] == [3, 10, 50, 90]
    assert sel.size == 60 and np.unique(sel).size == 60
    assert not set(sel.tolist()) & {3, 10, 50, 90}
    assert np.array_equal(sel, s2l_select(x, 60, n_clusters=10, seed=0)[0])
    with pytest.raises(ValueError, match="4 of 120 excluded"):
        s2l_select(x, 117, n_clusters=10)
    assert s2l_select(x, 116, n_clusters=10)[0].size == 116


def test_s2l_balances_clusters():
    # One big blob and two small ones: balanced sampling takes the small ones fully.
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (200, 4)), rng.normal(5, 0.1, (10, 4)), rng.normal(10, 0.1, (10, 4))])
    sel, info = s2l_select(x, 60, n_clusters=3, seed=0, backend="sklearn")
    assert sorted(info["cluster_sizes"]) == [10, 10, 200]
    # Quotas 20 -> 10 whole, then 25 -> 10 whole, then 40 from the big blob.
    assert (sel >= 200).sum() == 20 and (sel < 200).sum() == 40


def test_s2l_stratified_by_source():
    rng = np.random.default_rng(0)
    sizes = {"a": 2, "b": 10, "c": 30}
    sources = np.array([s for s, k in sizes.items() for _ in range(k)])
    x = rng.standard_normal((sources.size, 5))
    # Smallest source first: a gets floor(12/3) = 4 >= 2, whole; b gets floor(10/2) = 5;
    # c gets the remaining 5.
    sel, info = s2l_select(x, 12, n_clusters=3, seed=0, sources=list(sources))
    assert {s: int((sources[sel] == s).sum()) for s in sizes} == {"a": 2, "b": 5, "c": 5}
    assert [(e["source"], e["quota"], e["taken"]) for e in info["strata"]] == [("a", 4, 2), ("b", 5, 5), ("c", 5, 5)]
    assert info["n_filled_uniformly"] == 0
    assert np.array_equal(sel, s2l_select(x, 12, n_clusters=3, seed=0, sources=list(sources))[0])
