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


def from_influence(result: InfluenceScores, k: int, params: dict[str, Any]) -> SelectionResult:
    """Top-k of cosine / influence scores (LESS, RDS): by the aggregated score, or round-robin over subtasks."""
    if result.aggregation == "round_robin":
        selected = round_robin_top_k(result.per_subtask, k)
    else:
        selected = top_k(result.score, k)
    params = {**params, "aggregation": result.aggregation, "snapshot_weights": list(result.weights)}
    return SelectionResult(selected, result.score, (result.subtasks, result.per_subtask), params)
