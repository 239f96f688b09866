"""Selection budgets and deterministic top-k rules.

The budget is a fraction of the pool (LESS default 5%) or an absolute count. Top-k
breaks ties by ascending pool index with a stable sort, so the same scores always
give the same selection (the reference uses an unstable sort, docs/algorithms.md 1.3).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np


def resolve_budget(n: int, fraction: float | None = None, count: int | None = None) -> int:
    """The number ``k`` of examples to select from a pool of ``n``.

    Exactly one of ``fraction`` and ``count`` must be given. A fraction gives
    ``k = max(1, floor(n * fraction))``, computed on the decimal the fraction was
    written as (so ``0.29 * 100`` gives 29, not 28 from binary rounding).

    Args:
        n: pool size (>= 1).
        fraction: share of the pool, in ``(0, 1]``.
        count: number of examples, in ``[1, n]``.

    Returns:
        ``k``, with ``1 <= k <= n``.

    Raises:
        ValueError: when both or neither are given, or a value is out of range.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"pool size must be a positive integer, got {n}")
    n = int(n)
    if (fraction is None) == (count is None):
        raise ValueError("give exactly one of budget fraction and budget count")
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction):
            raise ValueError(f"budget fraction must be a number in (0, 1], got {fraction!r}")
        if not 0 < fraction <= 1:
            raise ValueError(f"budget fraction must be in (0, 1], got {fraction}")
        return max(1, math.floor(Fraction(repr(float(fraction))) * n))
    if isinstance(count, bool) or int(count) != count:
        raise ValueError(f"budget count must be an integer, got {count!r}")
    count = int(count)
    if count < 1:
        raise ValueError(f"budget count must be >= 1, got {count}")
    if count > n:
        raise ValueError(f"budget count {count} exceeds the pool size {n}")
    return count


def budget_info(n: int, fraction: float | None = None, count: int | None = None) -> dict[str, Any]:
    """The manifest's ``budget`` entry: ``{"fraction", "count", "k"}``."""
    return {"fraction": fraction, "count": count, "k": resolve_budget(n, fraction, count)}


def _as_scores(scores: Any, what: str = "scores") -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    n_nan = int(np.isnan(arr).sum())
    if n_nan:
        raise ValueError(f"{what} contain {n_nan} NaN value(s); refusing to rank them")
    return arr


def _check_k(k: int, n: int) -> int:
    if int(k) != k or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in [1, {n}], got {k}")
    return int(k)


def rank_order(scores: Any) -> np.ndarray:
    """All indices by descending score, ties by ascending index (a stable lexsort)."""
    arr = _as_scores(scores)
    if arr.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {arr.shape}")
    # lexsort sorts by the last key first; the index key makes the order total.
    return np.lexsort((np.arange(arr.size), -arr)).astype(np.int64)


def top_k(scores: Any, k: int) -> np.ndarray:
    """The indices of the ``k`` highest scores, best first, ties by ascending index.

    Args:
        scores: ``[n]`` scores (no NaN; +-inf are ordered normally).
        k: how many to take, ``1 <= k <= n``.

    Returns:
        ``[k]`` int64 indices in rank order.

    Raises:
        ValueError: on NaN scores (the message gives how many) or a bad ``k``.
    """
    order = rank_order(scores)
    return order[: _check_k(k, order.size)]


def round_robin_top_k(per_subtask: Any, k: int) -> np.ndarray:
    """Round-robin over subtasks: each in turn takes its best not-yet-selected example.

    Subtasks take turns in column order; within a subtask examples are ranked by
    descending score, ties by ascending index.

    Args:
        per_subtask: ``[n, S]`` scores per subtask.
        k: how many to take, ``1 <= k <= n``.

    Returns:
        ``[k]`` int64 indices in the order they were taken.
    """
    arr = _as_scores(per_subtask, "per-subtask scores")
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"per-subtask scores must be [n, S] with S >= 1, got shape {arr.shape}")
    n, n_subtasks = arr.shape
    k = _check_k(k, n)
    orders = [rank_order(arr[:, s]) for s in range(n_subtasks)]
    pointers = [0] * n_subtasks
    taken = np.zeros(n, dtype=bool)
    selected: list[int] = []
    s = 0
    while len(selected) < k:
        order, p = orders[s], pointers[s]
        # Each subtask skips what others took; total skipping is bounded by k * S.
        while taken[order[p]]:
            p += 1
        taken[order[p]] = True
        selected.append(int(order[p]))
        pointers[s] = p + 1
        s = (s + 1) % n_subtasks
    return np.asarray(selected, dtype=np.int64)
