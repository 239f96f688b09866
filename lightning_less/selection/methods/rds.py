"""RDS: cosine of final-layer hidden states at each example's last token, aggregated and selected as LESS (docs/algorithms.md).

The hidden states come from the predict pass of :mod:`lightning_less.passes.hidden_states`
(``pooling="last"``); :mod:`~lightning_less.selection.methods.rds_plus` is the same with
position-weighted mean pooling and round-robin over target subtasks.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from lightning_less.errors import InputError
from lightning_less.passes.hidden_states import compute_hidden_states
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
    exclude: Sequence[int] | np.ndarray | None = None,
) -> SelectionResult:
    """RDS: cosine of hidden states, the same aggregation and top-k as LESS; ``exclude``d pool rows are never
    scored nor selected."""
    result = cosine_scores(pool_features, target_features, target_subtasks, aggregation, block_size, device,
                           exclude=exclude)
    eligible = None if exclude is None or not len(exclude) else np.setdiff1d(np.arange(result.score.shape[0]), exclude)
    return from_influence(result, k, {}, eligible)


def device_of(trainer: dict[str, Any] | None) -> str:
    """The torch device of a Trainer ``accelerator`` argument (``cpu`` when none is given)."""
    accelerator = str((trainer or {}).get("accelerator", "cpu"))
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    devices = {"cpu": "cpu", "gpu": "cuda", "cuda": "cuda", "mps": "mps"}
    if accelerator not in devices:
        raise InputError(f"--trainer.accelerator {accelerator!r}: RDS hidden states run on one of {sorted(devices)} or auto")
    return devices[accelerator]


def hidden_features(inputs: Inputs, pooling: str, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The pool's and the targets' pooled hidden states under ``--model`` (one predict pass each, on one device).

    The stores are written to a temporary directory: they are an intermediate of the
    selection, whose manifest records what decides it. Pool rows without a response token
    are zeros there; they are ``inputs.excluded`` (the runner tokenized the pool with ``--model``).
    """
    request = inputs.request
    accelerator = {"cuda": "gpu"}.get(inputs.loaded["device"], inputs.loaded["device"])
    trainer = {"accelerator": accelerator, "devices": 1}
    with tempfile.TemporaryDirectory(prefix="lightning_less_hidden_") as tmp:
        return tuple(  # type: ignore[return-value]
            compute_hidden_states(request.model, list(files), Path(tmp) / name, pooling=pooling, max_length=request.max_length,
                                  batch_size=batch_size, trainer_kwargs=trainer, allow_excluded=name == "pool")
            for name, files in (("pool", request.pool), ("targets", request.targets)))


@register
class Rds(SelectionMethod):
    """Representation similarity with the targets, in the hidden states of ``model``."""

    name = "rds"
    description = "representation similarity: cosine of the model's last-token final hidden states, aggregated as LESS"
    needs = ("targets", "model")
    deciding = ("targets", "model", "aggregation", "max_length")

    def load(self, inputs: Inputs) -> dict[str, Any]:
        return {"device": device_of(inputs.request.trainer)}

    pooling: str = "last"

    def aggregation(self, inputs: Inputs) -> str:
        """How the per-target cosines are aggregated (RDS: ``--aggregation``, as LESS)."""
        return inputs.request.aggregation

    def select(self, inputs: Inputs) -> SelectionResult:
        pool_h, target_h = hidden_features(inputs, self.pooling)
        aggregation = self.aggregation(inputs)
        result = select_rds(pool_h, target_h, inputs.target_subtasks, inputs.k, aggregation=aggregation,
                            exclude=inputs.excluded)
        return replace(result, params={**result.params, "model": inputs.request.model, "pooling": self.pooling,
                                       "aggregation": aggregation})
