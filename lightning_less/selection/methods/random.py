"""Random: a seeded uniform sample of the pool (docs/algorithms.md, baselines)."""

from __future__ import annotations

from lightning_less.selection.baselines import random_select
from lightning_less.selection.registry import Inputs, SelectionMethod, register
from lightning_less.selection.result import SelectionResult


def select_random(n: int, k: int, seed: int = 0) -> SelectionResult:
    """A seeded uniform sample of ``k`` of ``n`` indices, ascending."""
    return SelectionResult(random_select(n, k, seed), None, None, {})


@register
class Random(SelectionMethod):
    """A seeded uniform sample: the baseline every method must beat."""

    name = "random"
    description = "a seeded uniform sample of the pool"
    deciding = ("seed",)

    def select(self, inputs: Inputs) -> SelectionResult:
        eligible = inputs.eligible  # the whole pool unless examples without a response token are left out
        return SelectionResult(eligible[random_select(eligible.size, inputs.k, inputs.request.seed)], None, None, {})
