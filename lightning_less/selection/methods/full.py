"""Full: the whole pool (the reference every selection is compared with)."""

from __future__ import annotations

from lightning_less.selection.registry import Inputs, SelectionMethod, register
from lightning_less.selection.result import SelectionResult


@register
class Full(SelectionMethod):
    """Every pool example (but those without a response token, when known), in pool order; no budget applies."""

    name = "full"
    description = "the whole pool, whatever the budget (the reference to compare with)"
    default_fraction = 1.0
    whole_pool = True

    def select(self, inputs: Inputs) -> SelectionResult:
        return SelectionResult(inputs.eligible, None, None, {})
