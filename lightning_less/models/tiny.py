"""A tiny Llama-style model and character-level tokenizer, built offline.

Nothing can be downloaded in tests or in the demo, so the project builds its own small
model from a config and saves it with ``save_pretrained``; everything downstream loads it
back with the real ``from_pretrained`` code path, exactly as it would load a hub model.

The name ``builtin:tiny-llama`` (or ``builtin:tiny-llama-<size>``) can be used wherever a
model name or path is accepted: it is built once, deterministically from a seed, into
the cache directory (:mod:`lightning_less.models.builtin` resolves every built-in name).
"""

from __future__ import annotations

import os
import string
from pathlib import Path

from lightning_less.errors import InputError
# Re-exported: built-in names were resolved here before SmolLM2 joined them, and callers import them from here.
from lightning_less.models.builtin import BUILTIN_PREFIX, cache_dir, resolve_model_path  # noqa: F401

SPECIAL_TOKENS = {"bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": "<pad>"}
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
# Printable ASCII plus Greek and Cyrillic letters (the demo's second surface form).
_EXTRA = "".join(chr(c) for c in range(0x391, 0x3CA)) + "".join(chr(c) for c in range(0x410, 0x450))
CHARS = "".join(dict.fromkeys(string.printable.replace("\x0b", "").replace("\x0c", "").replace("\r", "") + _EXTRA))

SIZES = {
    # name: (hidden, layers, heads, intermediate)
    "tiny": (64, 2, 4, 128),
    "small": (128, 4, 4, 256),
}


def build_tokenizer():
    """A character-level ``PreTrainedTokenizerFast`` with Llama-like special tokens and the Tülu role tags."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for ch in CHARS:
        vocab.setdefault(ch, len(vocab))
    # BPE with no merges over the whole string is exactly a character tokenizer.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=SPECIAL_TOKENS["unk"]))
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["unk"],
        pad_token=SPECIAL_TOKENS["pad"],
        model_max_length=4096,
    )
    tokenizer.add_tokens(ROLE_TOKENS)
    return tokenizer


def build_tiny_model(tokenizer=None, size: str = "tiny", seed: int = 0, max_position_embeddings: int = 1024):
    """A random-init ``LlamaForCausalLM`` of the given size, deterministic in ``seed``."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    if size not in SIZES:
        raise ValueError(f"unknown tiny model size {size!r}: expected one of {sorted(SIZES)}")
    tokenizer = tokenizer or build_tokenizer()
    hidden, layers, heads, inter = SIZES[size]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    devnull = torch.random.fork_rng(devices=[])
    with devnull:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model


def save_tiny_model(path: str | os.PathLike, size: str = "tiny", seed: int = 0) -> Path:
    """Build the tiny model and tokenizer and ``save_pretrained`` both to ``path``."""
    path = Path(path)
    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer, size=size, seed=seed)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_model(*, output: str, size: str = "tiny", seed: int = 0) -> dict[str, str | int]:
    """Build the offline tiny Llama-style model and its character-level tokenizer and save both.

    The directory loads back with ``AutoModelForCausalLM.from_pretrained`` and
    ``AutoTokenizer.from_pretrained``, like any hub model.

    Args:
        output: directory to ``save_pretrained`` into.
        size: ``tiny`` (2 layers, hidden size 64) or ``small`` (4 layers, hidden size 128).
        seed: initialisation seed (the same seed gives the same weights).

    Returns:
        ``{"path", "size", "seed"}`` of the saved model.
    """
    if size not in SIZES:
        raise InputError(f"--size: unknown tiny model size {size!r}; choose one of {sorted(SIZES)}")
    path = save_tiny_model(output, size=size, seed=seed)
    return {"path": str(path), "size": size, "seed": seed}
