"""Where a model and its tokenizer come from: a hub name, a local path, or a built-in name (``builtin:tiny-llama``, ``builtin:smollm2-135m``)."""

from __future__ import annotations

from typing import Any

import torch

from lightning_less.models.builtin import resolve_model_path

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def load_causal_lm(
    name_or_path: str,
    dtype: str | None = None,
    from_config: bool = False,
    attn_implementation: str | None = None,
    seed: int | None = None,
):
    """Load a causal LM with ``from_pretrained`` (or build it from its config when ``from_config``)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    if dtype is not None and dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: expected one of {sorted(_DTYPES)}")
    kwargs: dict[str, Any] = {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if from_config:
        config = AutoConfig.from_pretrained(path)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, **kwargs)
        if dtype not in (None, "auto"):
            model = model.to(_DTYPES[dtype])
        return model
    if dtype is not None:
        kwargs["dtype"] = _DTYPES[dtype]
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def load_tokenizer(name_or_path: str):
    """``AutoTokenizer.from_pretrained`` (built-in names resolved), with a pad token guaranteed."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    if tokenizer.pad_token_id is None:
        # Padding positions are masked out of attention and labels, so any id works;
        # EOS is the usual choice for Llama-family tokenizers that ship without a pad token.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
