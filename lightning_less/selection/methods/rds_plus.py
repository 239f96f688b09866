"""RDS+ (Ivison et al. 2025): position-weighted mean-pooled final hidden states, cosine, round-robin over subtasks.

"Large-Scale Data Selection for Instruction Tuning" finds this simple representation
baseline beats LESS on pools of millions. Each example's last hidden layer is averaged
over its real tokens with weights ``1, 2, ..., T`` normalised to sum 1
(:func:`~lightning_less.passes.hidden_states.pool_hidden_states`), the cosine to every
target is averaged per target subtask, and the subtasks take turns picking their best
remaining example (round-robin), as in that paper (docs/algorithms.md).
"""

from __future__ import annotations

from lightning_less.selection.methods.rds import Rds
from lightning_less.selection.registry import Inputs, register


@register
class RdsPlus(Rds):
    """RDS+: :class:`~lightning_less.selection.methods.rds.Rds` with weighted mean pooling and round-robin."""

    name = "rds_plus"
    description = ("RDS+: cosine of the model's position-weighted mean-pooled final hidden states, mean per target "
                   "subtask, round-robin over subtasks")
    deciding = ("targets", "model", "max_length")
    pooling = "weighted_mean"

    def aggregation(self, inputs: Inputs) -> str:
        """Always round-robin over the target subtasks, as the paper selects."""
        return "round_robin"
