"""Per-example causal-LM losses: each example's own response-token mean."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_less.data.formatting import IGNORE_INDEX


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over each example's own response tokens.

    Args:
        logits: ``[B, T, V]`` model outputs.
        labels: ``[B, T]`` unshifted labels, -100 where ignored.

    Returns:
        ``[B]`` float32 losses; NaN for an example with no response token (callers that
        cannot accept that must drop such examples before, as the datasets do).
    """
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    token_loss = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shift_labels.shape)
    mask = (shift_labels != IGNORE_INDEX).float()
    return (token_loss * mask).sum(1) / mask.sum(1)
