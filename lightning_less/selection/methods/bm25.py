"""BM25: Okapi BM25 (Lucene variant) of each pool prompt against one query per target subtask (docs/algorithms.md)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lightning_less.data.records import Record
from lightning_less.selection.baselines import bm25_scores
from lightning_less.selection.registry import Inputs, SelectionMethod, register
from lightning_less.selection.result import SelectionResult, blank, top_k_among


def select_bm25(
    pool: Sequence[Record], targets: Sequence[Record], k: int, k1: float = 1.5, b: float = 0.75,
    eligible: np.ndarray | None = None,
) -> SelectionResult:
    """The top-k pool examples by their mean BM25 over the subtask queries, among ``eligible`` (default: all);
    the scores are those of the whole pool, blank on the other rows."""
    score, per_subtask, names = bm25_scores(pool, targets, k1, b)
    return SelectionResult(top_k_among(score, k, eligible), blank(score, eligible), (names, blank(per_subtask, eligible)),
                           {"k1": k1, "b": b, "variant": "lucene"})


@register
class Bm25(SelectionMethod):
    """Word overlap with the targets, one query per target subtask."""

    name = "bm25"
    description = "word overlap: mean BM25 of each pool prompt against one query per target subtask, top-k"
    needs = ("targets",)
    deciding = ("targets",)

    def select(self, inputs: Inputs) -> SelectionResult:
        return select_bm25(inputs.pool, inputs.targets, inputs.k, eligible=inputs.eligible)
