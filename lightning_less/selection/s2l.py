"""S2L (SmallToLarge): k-means on loss trajectories, then balanced sampling.

Implements ``docs/algorithms.md`` section 2:

1. Examples whose trajectory has a NaN (no defined loss, e.g. no response token left
   after truncation) or an infinite value are excluded and reported; the reference
   silently sets NaN to 0, which would cluster them with near-perfect examples.
2. Optional stratification by source: sources are visited smallest first (ties by
   name), each gets ``floor(remaining budget / remaining sources)``; a source no
   larger than its quota is taken whole and its unused share passes on.
3. Inside a stratum: k-means (K=100, L2, 20 iterations, faiss) on the trajectories,
   each example assigned to its nearest centroid.
4. Balanced sampling (:func:`balanced_sample`): clusters visited smallest first
   (ties by cluster id), each gets ``floor(remaining / remaining clusters)``; a
   cluster no larger than its quota is taken whole (its unused share passes on),
   otherwise its quota is drawn uniformly without replacement. Clusters of size
   <= 2 are set aside and used only for budget left at the end.

Unlike the reference, all sampling is driven by one seeded ``numpy`` Generator, so a
seed gives the same subset every time.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

SMALL_CLUSTER_SIZE = 2


def kmeans_cluster(
    trajectories: Any,
    n_clusters: int = 100,
    n_iter: int = 20,
    seed: int = 0,
    backend: str = "faiss",
) -> tuple[np.ndarray, dict]:
    """K-means (L2) on trajectories; each row gets the id of its nearest centroid.

    Args:
        trajectories: ``[n, T]`` finite losses.
        n_clusters: K (the reference: 100); clamped to ``n`` when the pool is smaller.
        n_iter: Lloyd iterations (the reference: 20).
        seed: seed of the centroid initialisation.
        backend: ``"faiss"`` (the reference's choice) or ``"sklearn"``.

    Returns:
        ``(labels [n] int64, info)``, ``info`` holding ``n_clusters`` (used),
        ``n_clusters_requested``, ``clamped`` and ``backend``.
    """
    x = np.ascontiguousarray(np.asarray(trajectories, dtype=np.float32))
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"trajectories must be a non-empty [n, T] array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("trajectories contain NaN or inf; exclude those rows first (s2l_select does)")
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    n, dim = x.shape
    k = min(int(n_clusters), n)
    info = {"n_clusters": k, "n_clusters_requested": int(n_clusters), "clamped": k < n_clusters, "backend": backend}
    if k == 1:
        return np.zeros(n, dtype=np.int64), info
    if backend == "faiss":
        import faiss

        # min_points_per_centroid=1 only silences faiss' "please provide more points"
        # warning; the clustering itself (including its subsampling of large inputs
        # to 256 points per centroid, as in the reference) is faiss' default.
        km = faiss.Kmeans(dim, k, niter=int(n_iter), seed=int(seed), verbose=False, min_points_per_centroid=1)
        km.train(x)
        _, labels = km.index.search(x, 1)
        return labels.ravel().astype(np.int64), info
    if backend == "sklearn":
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=k, max_iter=int(n_iter), n_init=1, random_state=int(seed))
        return km.fit_predict(x).astype(np.int64), info
    raise ValueError(f"unknown k-means backend {backend!r}, expected 'faiss' or 'sklearn'")


def _quota_pass(
    groups: Sequence[np.ndarray], budget: int, rng: np.random.Generator, chosen: list[np.ndarray]
) -> int:
    """Visit ``groups`` in the given order with quota ``floor(remaining / groups left)``.

    A group no larger than its quota is taken whole; otherwise its quota is drawn
    uniformly without replacement. Returns the budget left over.
    """
    remaining = budget
    for j, members in enumerate(groups):
        quota = remaining // (len(groups) - j)
        if members.size <= quota:
            take = members
        else:
            take = rng.choice(members, size=quota, replace=False)
        chosen.append(np.asarray(take, dtype=np.int64))
        remaining -= take.size
    return remaining


def _as_rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def balanced_sample(labels: Any, budget: int, seed: int | np.random.Generator = 0) -> np.ndarray:
    """S2L's balanced sampling over clusters (docs/algorithms.md 2).

    Clusters of more than two examples are visited smallest first (ties by cluster
    id), each with quota ``floor(remaining / clusters left)``. Budget still left
    afterwards is filled by the same procedure over the set-aside clusters of size
    <= 2 (smallest first); should any budget still remain (the floors can leave some
    when the last clusters are taken whole), it is drawn uniformly from the examples
    not yet selected.

    Args:
        labels: ``[n]`` cluster id of each example.
        budget: how many to select, ``1 <= budget <= n``.
        seed: seed (or Generator) of the uniform draws.

    Returns:
        ``[budget]`` distinct int64 positions into ``labels``, ascending.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    n = labels.size
    if int(budget) != budget or not 1 <= budget <= n:
        raise ValueError(f"budget must be an integer in [1, {n}], got {budget}")
    rng = _as_rng(seed)
    ids, sizes = np.unique(labels, return_counts=True)
    order = np.lexsort((ids, sizes))  # smallest first, ties by cluster id
    positions = np.arange(n, dtype=np.int64)
    clusters = [positions[labels == ids[c]] for c in order]
    large = [c for c in clusters if c.size > SMALL_CLUSTER_SIZE]
    small = [c for c in clusters if c.size <= SMALL_CLUSTER_SIZE]
    chosen: list[np.ndarray] = []
    remaining = _quota_pass(large, int(budget), rng, chosen)
    if remaining:
        remaining = _quota_pass(small, remaining, rng, chosen)
    if remaining:
        taken = np.zeros(n, dtype=bool)
        taken[np.concatenate(chosen)] = True
        chosen.append(rng.choice(positions[~taken], size=remaining, replace=False))
    return np.sort(np.concatenate(chosen))


def s2l_select(
    trajectories: Any,
    budget: int,
    n_clusters: int = 100,
    n_iter: int = 20,
    seed: int = 0,
    sources: Sequence[str] | None = None,
    backend: str = "faiss",
) -> tuple[np.ndarray, dict]:
    """Select ``budget`` examples by S2L (docs/algorithms.md 2).

    Args:
        trajectories: ``[n, T]`` response-token mean losses at each checkpoint.
        budget: number of examples to select (at most the number with finite trajectories).
        n_clusters: K per stratum (clamped to the stratum size).
        n_iter: k-means iterations.
        seed: seeds k-means and the sampling.
        sources: optional ``[n]`` source name per example, to stratify by.
        backend: k-means backend (``"faiss"`` or ``"sklearn"``).

    Returns:
        ``(indices, info)``: ``[budget]`` ascending pool indices, and ``info`` with
        ``n_excluded`` / ``excluded_indices`` (non-finite trajectories) and, per
        stratum, its size, quota, number taken and clustering details.
    """
    x = np.asarray(trajectories, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"trajectories must be a non-empty [n, T] array, got shape {x.shape}")
    n = x.shape[0]
    finite = np.all(np.isfinite(x), axis=1)
    excluded = np.nonzero(~finite)[0]
    valid = np.nonzero(finite)[0]
    info: dict[str, Any] = {"n_excluded": int(excluded.size), "excluded_indices": excluded.tolist()}
    if int(budget) != budget or not 1 <= budget <= valid.size:
        raise ValueError(
            f"budget must be an integer in [1, {valid.size}] (examples with a defined trajectory; "
            f"{excluded.size} of {n} excluded), got {budget}"
        )
    rng = np.random.default_rng(seed)

    if sources is None:
        strata = [("<all>", valid)]
    else:
        if len(sources) != n:
            raise ValueError(f"got {len(sources)} sources for {n} trajectories")
        src = np.asarray([str(s) for s in sources])[valid]
        names, sizes = np.unique(src, return_counts=True)
        order = np.lexsort((names, sizes))  # smallest first, ties by name
        strata = [(str(names[o]), valid[src == names[o]]) for o in order]

    chosen: list[np.ndarray] = []
    remaining = int(budget)
    info["strata"] = []
    for j, (name, members) in enumerate(strata):
        quota = remaining // (len(strata) - j)
        entry: dict[str, Any] = {"source": name, "size": int(members.size), "quota": int(quota)}
        if members.size <= quota:
            take = members
        elif quota == 0:
            take = members[:0]
        else:
            labels, km_info = kmeans_cluster(x[members], n_clusters, n_iter, seed, backend)
            take = members[balanced_sample(labels, quota, rng)]
            entry.update(km_info)
            entry["cluster_sizes"] = np.bincount(labels).tolist()
        entry["taken"] = int(take.size)
        info["strata"].append(entry)
        chosen.append(take)
        remaining -= take.size
    if remaining:
        # Floors left budget after the last strata were taken whole: fill uniformly.
        taken = np.zeros(n, dtype=bool)
        taken[np.concatenate(chosen)] = True
        pool = valid[~taken[valid]]
        chosen.append(rng.choice(pool, size=remaining, replace=False))
    info["n_filled_uniformly"] = int(remaining)
    selected = np.sort(np.concatenate(chosen).astype(np.int64))
    if sources is None:
        info.update({k: v for k, v in info["strata"][0].items() if k not in ("source", "size", "quota", "taken")})
    return selected, info
