"""`lightning-less select` and `LessDataModule` on selections of every unscored/lexical method."""

import json

import numpy as np
import pytest

from lightning_less.cli import main
from lightning_less.selection.datamodule import LessDataModule
from lightning_less.selection.outputs import StaleSelectionError, read_selection
from tests.helpers import qa_records, write_jsonl


@pytest.fixture()
def files(tmp_path):
    pool = [write_jsonl(tmp_path / f"pool_{i}.jsonl", qa_records(10, prefix=f"f{i}-", task=f"src{i}")) for i in range(3)]
    targets = write_jsonl(tmp_path / "targets.jsonl", [dict(r, subtask="s") for r in qa_records(3, prefix="t")])
    return [str(p) for p in pool], str(targets)


@pytest.mark.parametrize("method", ["random", "bm25", "dsir"])
def test_select_command_is_reproducible_and_byte_identical(tmp_path, files, method):
    pool, targets = files
    outs = []
    for run in range(2):
        out = tmp_path / f"{method}_{run}"
        main(["select", "--method", method, "--pool", json.dumps(pool), "--targets", json.dumps([targets]),
              "--output", str(out), "--count", "7", "--seed", "3"])
        outs.append(out)
    a, b = ((o / "selected.jsonl").read_bytes() for o in outs)
    assert a == b and len(a.splitlines()) == 7
    raw = b"".join(open(p, "rb").read() for p in pool).splitlines()
    assert all(line in raw for line in a.splitlines())
    with pytest.raises(FileExistsError):  # another budget into the same directory
        main(["select", "--method", method, "--pool", json.dumps(pool), "--targets", json.dumps([targets]),
              "--output", str(outs[0]), "--count", "5", "--seed", "3"])


def test_less_data_module_serves_the_selection(tmp_path, files):
    pool, targets = files
    out = tmp_path / "bm25"
    main(["select", "--method", "bm25", "--pool", json.dumps(pool), "--targets", json.dumps([targets]),
          "--output", str(out), "--count", "6"])
    sel = read_selection(out)
    dm = LessDataModule(str(out), tokenizer_name_or_path="builtin:tiny-llama", batch_size=2)
    dm.setup("fit")
    ds = dm.datasets["train"]
    assert [ex.record.index for ex in ds.examples] == list(sel.selected)
    recut = LessDataModule(str(out), count=3, tokenizer_name_or_path="builtin:tiny-llama")
    recut.setup("fit")
    order = np.lexsort((np.arange(len(sel.scores)), -sel.scores))[:3]
    assert [ex.record.index for ex in recut.datasets["train"].examples] == list(order)
    # A pool edited after selection is stale.
    with open(pool[1], "a") as f:
        f.write(json.dumps({"prompt": "new", "completion": "line"}) + "\n")
    with pytest.raises(StaleSelectionError):
        LessDataModule(str(out), tokenizer_name_or_path="builtin:tiny-llama")
