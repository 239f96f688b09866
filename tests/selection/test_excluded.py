"""Pool examples with no response token left after truncation: counted, named and never selected, by every method.

The rule (docs/algorithms.md, "Examples without a response token"): a selection that knows a
tokenizer (``--model``) and ``--max_length`` leaves those examples out, whatever the method;
targets without one are refused. The tiny model's tokenizer is one token per character, so a
long prompt pushes the response past ``max_length``.
"""

from __future__ import annotations

import json

import pytest

from lightning_less.data.datamodule import InstructionDataset
from lightning_less.errors import InputError
from lightning_less.models.loading import load_tokenizer
from lightning_less.selection.outputs import StaleSelectionError
from lightning_less.selection.runner import records_without_response, run_selection
from lightning_less.data.records import read_records
from tests.selection.fakes import records, selected_ids, write_records

MODEL, MAX_LENGTH = "builtin:tiny-llama", 48
LONG = (1, 4, 8)  # pool records whose response lies beyond MAX_LENGTH


@pytest.fixture
def files(tmp_path):
    pool = records(10, "p", words=["alpha", "beta", "gamma", "delta", "alpha", "beta", "gamma", "delta", "alpha", "beta"])
    for i in LONG:
        pool[i]["messages"][0]["content"] = "say " + "x " * 40 + pool[i]["messages"][1]["content"]
    targets = records(3, "t", subtasks=["a", "a", "b"], words=["alpha", "beta", "alpha"])
    return write_records(tmp_path / "pool.jsonl", pool), write_records(tmp_path / "targets.jsonl", targets)


def test_the_rule_is_the_datasets_rule(files):
    """The runner leaves out exactly the records the training dataset drops at this max_length."""
    pool, _ = files
    found = records_without_response(read_records([pool]), MODEL, MAX_LENGTH)
    dataset = InstructionDataset([pool], load_tokenizer(MODEL), max_length=MAX_LENGTH)
    assert found.tolist() == dataset.dropped_indices.tolist() == list(LONG)


@pytest.mark.parametrize("method", ["random", "bm25", "dsir", "full", "rds", "rds_response"])
def test_every_method_never_selects_them(files, tmp_path, method):
    pool, targets = files
    count = None if method == "full" else 7  # every example left with a response token
    out = run_selection(method, [pool], [targets], tmp_path / "sel", count=count, model=MODEL, max_length=MAX_LENGTH)
    assert sorted(selected_ids(out)) == sorted(f"p{i}" for i in range(10) if i not in LONG)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"]["excluded"]["count"] == 3 and manifest["params"]["excluded"]["ids"] == [f"p{i}" for i in LONG]
    assert manifest["n_selected"] == 7


def test_without_a_tokenizer_nothing_is_left_out_and_a_tokenizer_makes_it_stale(files, tmp_path):
    """A sample drawn without knowing the tokenizer may hold them; the same request with --model is another
    selection (refused as stale), and it holds none of them."""
    pool, targets = files
    seen = set()
    for seed in range(6):  # 7 of 10 by chance: some seed draws a long one
        seen |= set(selected_ids(run_selection("random", [pool], None, tmp_path / f"r{seed}", count=7, seed=seed)))
    assert seen & {f"p{i}" for i in LONG}
    with pytest.raises(StaleSelectionError, match="it left out 0 pool examples"):
        run_selection("random", [pool], None, tmp_path / "r0", count=7, seed=0, model=MODEL, max_length=MAX_LENGTH)
    out = run_selection("random", [pool], None, tmp_path / "r0", count=7, seed=0, model=MODEL, max_length=MAX_LENGTH,
                        overwrite=True)
    assert not set(selected_ids(out)) & {f"p{i}" for i in LONG}


def test_a_budget_above_the_examples_left_is_refused_before_anything_is_written(files, tmp_path):
    pool, targets = files
    with pytest.raises(InputError, match=r"budget \(8\) exceeds the 7 pool examples .*: 3 \(ids p1, p4, p8\)"):
        run_selection("random", [pool], None, tmp_path / "sel", count=8, model=MODEL, max_length=MAX_LENGTH)
    assert not (tmp_path / "sel").exists()


def test_targets_without_a_response_token_are_refused(files, tmp_path):
    pool, _ = files
    long_targets = records(3, "t", subtasks=["a", "a", "b"])
    long_targets[2]["messages"][0]["content"] = "x " * 40
    targets = write_records(tmp_path / "long_targets.jsonl", long_targets)
    with pytest.raises(InputError, match=r"--targets: target examples without a response token .*: 1 \(ids t2\), the first at .*:3;"):
        run_selection("bm25", [pool], [targets], tmp_path / "sel", count=3, model=MODEL, max_length=MAX_LENGTH)


def test_an_unloadable_model_is_an_input_error(files, tmp_path):
    pool, _ = files
    with pytest.raises(InputError, match="--model no/such-model: cannot load its tokenizer"):
        run_selection("random", [pool], None, tmp_path / "sel", count=3, model="no/such-model")
