"""One selector interface for every method: LESS, RDS, S2L, random, BM25, DSIR.

Every selector takes the inputs its method needs plus the budget ``k`` and returns a
:class:`SelectionResult`, so that :func:`~lightning_less.selection.outputs.write_selection`
writes every method's output the same way::

    result = SELECTORS["bm25"](pool=pool_records, targets=target_records, k=100)
    write_selection(out, pool_records, result.selected, result.scores, "bm25", budget, seed=None,
                    per_subtask=result.per_subtask, params=result.params)

The caller loads what a method needs (gradient datastores for LESS, hidden states for
RDS, loss trajectories for S2L, records for BM25 / DSIR). Selected indices are in
rank order: descending score with ties by ascending index for scored methods, the
round-robin order for ``aggregation="round_robin"``, the Gumbel order for DSIR with
``gumbel=True``, and ascending index for the unranked S2L and random samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from lightning_less.data.records import Record
from lightning_less.selection.baselines import (
    bm25_scores,
    dsir_weights,
    gumbel_top_k,
    random_select,
)
from lightning_less.selection.budget import round_robin_top_k, top_k
from lightning_less.selection.s2l import s2l_select
from lightning_less.selection.scoring import InfluenceScores, cosine_scores, influence_scores


@dataclass(frozen=True)
class SelectionResult:
    """What a selector returns.

    Attributes:
        selected: ``[k]`` int64 pool indices in rank order.
        scores: ``[n]`` scores in pool order, or ``None`` for unscored methods.
        per_subtask: optional ``(subtask names, [n, S] scores)``.
        params: method parameters (and diagnostics) for the manifest.
    """

    selected: np.ndarray
    scores: np.ndarray | None
    per_subtask: tuple[tuple[str, ...], np.ndarray] | None = None
    params: dict[str, Any] = field(default_factory=dict)


def _from_influence(result: InfluenceScores, k: int, params: dict[str, Any]) -> SelectionResult:
    if result.aggregation == "round_robin":
        selected = round_robin_top_k(result.per_subtask, k)
    else:
        selected = top_k(result.score, k)
    params = {**params, "aggregation": result.aggregation, "snapshot_weights": list(result.weights)}
    return SelectionResult(selected, result.score, (result.subtasks, result.per_subtask), params)


def select_less(
    pool_features: Sequence[Any],
    target_features: Sequence[Any],
    snapshot_lrs: Sequence[float],
    target_subtasks: Sequence[str],
    k: int,
    aggregation: str = "max_subtask_mean",
    block_size: int | None = None,
    device: str | torch.device = "cpu",
) -> SelectionResult:
    """LESS: LR-weighted cosine over snapshots, subtask aggregation, top-k (docs/algorithms.md §1.5)."""
    result = influence_scores(
        pool_features, target_features, snapshot_lrs, target_subtasks, aggregation, block_size, device
    )
    return _from_influence(result, k, {"snapshot_lrs": [float(x) for x in snapshot_lrs]})


def select_rds(
    pool_features: Any,
    target_features: Any,
    target_subtasks: Sequence[str],
    k: int,
    aggregation: str = "max_subtask_mean",
    block_size: int | None = None,
    device: str | torch.device = "cpu",
) -> SelectionResult:
    """RDS: cosine of final-layer hidden states, same aggregation and top-k as LESS (docs/algorithms.md §3.4)."""
    result = cosine_scores(pool_features, target_features, target_subtasks, aggregation, block_size, device)
    return _from_influence(result, k, {})


def select_s2l(
    trajectories: Any,
    k: int,
    n_clusters: int = 100,
    n_iter: int = 20,
    seed: int = 0,
    sources: Sequence[str] | None = None,
    backend: str = "faiss",
) -> SelectionResult:
    """S2L: k-means on loss trajectories + balanced sampling (docs/algorithms.md §2)."""
    selected, info = s2l_select(trajectories, k, n_clusters, n_iter, seed, sources, backend)
    params = {
        "n_clusters": n_clusters,
        "n_iter": n_iter,
        "kmeans_backend": backend,
        "stratified_by_source": sources is not None,
        "info": info,
    }
    return SelectionResult(selected, None, None, params)


def select_random(n: int, k: int, seed: int = 0) -> SelectionResult:
    """Random: a seeded uniform sample (docs/algorithms.md §3.1)."""
    return SelectionResult(random_select(n, k, seed), None, None, {})


def select_bm25(
    pool: Sequence[Record], targets: Sequence[Record], k: int, k1: float = 1.5, b: float = 0.75
) -> SelectionResult:
    """BM25: mean over subtask queries of Okapi BM25 (Lucene variant), top-k (docs/algorithms.md §3.2)."""
    score, per_subtask, names = bm25_scores(pool, targets, k1, b)
    return SelectionResult(top_k(score, k), score, (names, per_subtask), {"k1": k1, "b": b, "variant": "lucene"})


def select_dsir(
    pool: Sequence[Record],
    targets: Sequence[Record],
    k: int,
    gumbel: bool = False,
    seed: int = 0,
    num_buckets: int = 10_000,
    min_tokens: int = 0,
    field: str = "text",
) -> SelectionResult:
    """DSIR: hashed n-gram importance weights, plain or Gumbel top-k (docs/algorithms.md §3.3)."""
    weights = dsir_weights(pool, targets, num_buckets, min_tokens, field)
    selected = gumbel_top_k(weights, k, seed) if gumbel else top_k(weights, k)
    params = {"gumbel": gumbel, "num_buckets": num_buckets, "min_tokens": min_tokens, "field": field, "ngrams": 2}
    return SelectionResult(selected, weights, None, params)


SELECTORS: dict[str, Callable[..., SelectionResult]] = {
    "less": select_less,
    "rds": select_rds,
    "s2l": select_s2l,
    "random": select_random,
    "bm25": select_bm25,
    "dsir": select_dsir,
}
