"""The model an evaluation runs on: a base model, optionally with a saved PEFT adapter on top."""

from __future__ import annotations

from pathlib import Path

import torch

from lightning_less.errors import MissingInputError
from lightning_less.models.loading import load_causal_lm, load_tokenizer


def load_for_evaluation(model: str, adapter: str | None = None, dtype: str | None = None, device: str | None = None):
    """``(model, tokenizer)``: the base model (hub name, path or ``builtin:``) with ``adapter`` applied, in eval mode on ``device``.

    The tokenizer is the adapter directory's when it holds one (``save_pretrained`` of a
    training run writes it there), else the base model's.
    """
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise MissingInputError(f"{adapter}: no adapter_config.json; --adapter must be a PEFT adapter directory (save_pretrained)")
    network = load_causal_lm(model, dtype=dtype)
    if adapter is not None:
        from peft import PeftModel

        network = PeftModel.from_pretrained(network, adapter)
    tokenizer_source = adapter if adapter is not None and (Path(adapter) / "tokenizer_config.json").is_file() else model
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return network.to(device).eval(), load_tokenizer(tokenizer_source)
