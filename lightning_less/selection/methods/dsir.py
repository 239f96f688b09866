"""DSIR: hashed n-gram importance weights of the pool towards the targets (docs/algorithms.md)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lightning_less.data.records import Record
from lightning_less.selection.baselines import dsir_weights, gumbel_top_k
from lightning_less.selection.registry import Inputs, SelectionMethod, register
from lightning_less.selection.result import SelectionResult, blank, top_k_among


def select_dsir(
    pool: Sequence[Record],
    targets: Sequence[Record],
    k: int,
    gumbel: bool = False,
    seed: int = 0,
    num_buckets: int = 10_000,
    min_tokens: int = 0,
    field: str = "text",
    eligible: np.ndarray | None = None,
) -> SelectionResult:
    """The ``k`` highest importance weights (or a Gumbel top-k sample of them, seeded), among ``eligible``
    (default: all); the weights are those of the whole pool, blank on the other rows."""
    weights = dsir_weights(pool, targets, num_buckets, min_tokens, field)
    if gumbel:
        selected = gumbel_top_k(weights if eligible is None else weights[eligible], k, seed)
        selected = selected if eligible is None else eligible[selected]
    else:
        selected = top_k_among(weights, k, eligible)
    params = {"gumbel": gumbel, "num_buckets": num_buckets, "min_tokens": min_tokens, "field": field, "ngrams": 2}
    return SelectionResult(selected, blank(weights, eligible), None, params)


@register
class Dsir(SelectionMethod):
    """Importance resampling on hashed unigrams and bigrams: plain top-k, so no seed decides it."""

    name = "dsir"
    description = "n-gram importance: hashed unigram+bigram log-ratio of target to pool frequencies, top-k"
    needs = ("targets",)
    deciding = ("targets",)

    def select(self, inputs: Inputs) -> SelectionResult:
        return select_dsir(inputs.pool, inputs.targets, inputs.k, seed=inputs.request.seed, eligible=inputs.eligible)
