"""What every selection method returns: :class:`SelectionResult`, written by :func:`~lightning_less.selection.outputs.write_selection`.

Selected indices are in rank order: descending score with ties by ascending index for
scored methods, the round-robin order for ``aggregation="round_robin"``, and ascending
index for the unranked samples (S2L, random, full).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lightning_less.selection.budget import round_robin_top_k, top_k
from lightning_less.selection.scoring import InfluenceScores


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


def top_k_among(scores: Any, k: int, eligible: np.ndarray | None = None) -> np.ndarray:
    """:func:`~lightning_less.selection.budget.top_k` over the ``eligible`` pool indices only (all when ``None``):
    pool indices, best first, ties by ascending index. The other rows' scores are never read (they may be NaN)."""
    if eligible is None:
        return top_k(scores, k)
    return eligible[top_k(np.asarray(scores)[eligible], k)]


def blank(scores: np.ndarray, eligible: np.ndarray | None) -> np.ndarray:
    """``scores`` with NaN (an empty cell in ``scores.csv``) on every row outside ``eligible``."""
    if eligible is None or eligible.size == scores.shape[0]:
        return scores
    out = np.full(scores.shape, np.nan, dtype=np.float64 if scores.dtype.kind != "f" else scores.dtype)
    out[eligible] = scores[eligible]
    return out


def from_influence(result: InfluenceScores, k: int, params: dict[str, Any],
                   eligible: np.ndarray | None = None) -> SelectionResult:
    """Top-k of cosine / influence scores (LESS, RDS): by the aggregated score, or round-robin over subtasks,
    among the ``eligible`` pool indices (all when ``None``; the others were not scored, NaN)."""
    if result.aggregation == "round_robin":
        per_subtask = result.per_subtask if eligible is None else result.per_subtask[eligible]
        selected = round_robin_top_k(per_subtask, k)
        selected = selected if eligible is None else eligible[selected]
    else:
        selected = top_k_among(result.score, k, eligible)
    params = {**params, "aggregation": result.aggregation, "snapshot_weights": list(result.weights)}
    return SelectionResult(selected, result.score, (result.subtasks, result.per_subtask), params)
