"""RDS features: each example's final-layer hidden state at its last real token."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from lightning_less.data.datamodule import InstructionCollator, InstructionDataset
from lightning_less.models.loading import load_causal_lm, load_tokenizer


@torch.no_grad()
def last_token_hidden_states(model_name_or_path: str, files: Sequence[str], max_length: int = 2048,
                             batch_size: int = 16, device: str = "cpu") -> np.ndarray:
    """RDS features: the final-layer hidden state at each example's last non-pad token, [n, hidden]."""
    from tqdm.auto import tqdm

    tokenizer = load_tokenizer(model_name_or_path)
    model = load_causal_lm(model_name_or_path).to(device).eval()
    ds = InstructionDataset(list(files), tokenizer, max_length=max_length)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=InstructionCollator(tokenizer.pad_token_id, "right"))
    out = np.zeros((len(ds.records), model.config.hidden_size), dtype=np.float32)
    for batch in tqdm(loader, desc="RDS hidden states", leave=False):
        mask = batch["attention_mask"].to(device)
        hidden = model(input_ids=batch["input_ids"].to(device), attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        last = mask.sum(1) - 1  # right padding: the last real token
        out[batch["index"].numpy()] = hidden[torch.arange(hidden.size(0)), last].float().cpu().numpy()
    if ds.dropped:
        raise ValueError(f"{len(ds.dropped)} examples of {list(files)} have no response token after truncation")
    return out
