"""RDS-response: RDS+ with the hidden states mean-pooled over the response tokens only (docs/algorithms.md).

Pooling over the whole example (RDS+) mixes the instruction's wording into the feature,
so a target in one surface form (language) also pulls the pool examples of other tasks in
that form. Pooling over the response tokens (those LESS takes its loss on) keeps what the
model computes while producing the answer; in the demo's ``cross_form`` scenario, where the
target task is in the pool only in the other form, this follows the task instead of the form.
"""

from __future__ import annotations

from lightning_less.selection.methods.rds_plus import RdsPlus
from lightning_less.selection.registry import register


@register
class RdsResponse(RdsPlus):
    """RDS+ with response-token mean pooling, round-robin over target subtasks."""

    name = "rds_response"
    description = ("cosine of the model's final hidden states mean-pooled over the response tokens, mean per target "
                   "subtask, round-robin over subtasks")
    pooling = "response_mean"
