"""Per-example causal-LM losses: each example's own response-token mean."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

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


def example_losses(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Per-example response-token mean losses ``[B]`` of one padded batch (one forward).

    Position ids are taken from the attention mask, so left padding gives every example
    the positions it has alone (models with absolute position embeddings included).
    """
    mask = batch["attention_mask"]
    position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=position_ids).logits
    return per_example_loss(logits, batch["labels"])


@torch.no_grad()
def record_losses(model: torch.nn.Module, loader: DataLoader, n: int, device: torch.device | str | None = None) -> np.ndarray:
    """Per-example token-mean losses ``[n]`` (NaN for indices the loader does not cover)."""
    was_training = model.training
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    out = np.full(n, np.nan, dtype=np.float64)
    try:
        for batch in loader:
            batch = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "labels")} | {"index": batch["index"]}
            out[batch["index"].numpy()] = example_losses(model, batch).double().cpu().numpy()
    finally:
        model.train(was_training)
    return out

