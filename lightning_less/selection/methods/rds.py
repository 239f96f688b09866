"""RDS: cosine of final-layer hidden states at each example's last token, aggregated and selected as LESS (docs/algorithms.md)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import torch

from lightning_less.errors import InputError
from lightning_less.passes.hidden_states import last_token_hidden_states
from lightning_less.selection.registry import Inputs, SelectionMethod, register
from lightning_less.selection.result import SelectionResult, from_influence
from lightning_less.selection.scoring import cosine_scores


def select_rds(
    pool_features: Any,
    target_features: Any,
    target_subtasks: Sequence[str],
    k: int,
    aggregation: str = "max_subtask_mean",
    block_size: int | None = None,
    device: str | torch.device = "cpu",
) -> SelectionResult:
    """RDS: cosine of hidden states, the same aggregation and top-k as LESS."""
    result = cosine_scores(pool_features, target_features, target_subtasks, aggregation, block_size, device)
    return from_influence(result, k, {})


def device_of(trainer: dict[str, Any] | None) -> str:
    """The torch device of a Trainer ``accelerator`` argument (``cpu`` when none is given)."""
    accelerator = str((trainer or {}).get("accelerator", "cpu"))
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    devices = {"cpu": "cpu", "gpu": "cuda", "cuda": "cuda", "mps": "mps"}
    if accelerator not in devices:
        raise InputError(f"--trainer.accelerator {accelerator!r}: RDS hidden states run on one of {sorted(devices)} or auto")
    return devices[accelerator]


@register
class Rds(SelectionMethod):
    """Representation similarity with the targets, in the hidden states of ``model``."""

    name = "rds"
    description = "representation similarity: cosine of the model's last-token final hidden states, aggregated as LESS"
    needs = ("targets", "model")
    deciding = ("targets", "model", "aggregation", "max_length")

    def load(self, inputs: Inputs) -> dict[str, Any]:
        return {"device": device_of(inputs.request.trainer)}

    def select(self, inputs: Inputs) -> SelectionResult:
        request, device = inputs.request, inputs.loaded["device"]
        pool_h = last_token_hidden_states(request.model, list(request.pool), request.max_length, device=device)
        target_h = last_token_hidden_states(request.model, list(request.targets), request.max_length, device=device)
        result = select_rds(pool_h, target_h, inputs.target_subtasks, inputs.k, aggregation=request.aggregation)
        return replace(result, params={**result.params, "model": request.model})
