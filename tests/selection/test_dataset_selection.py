"""Selecting from a ``datasets`` input: the same selection as the same rows in jsonl, plus a saved dataset of them."""

from __future__ import annotations

import json

import numpy as np
import pytest

import datasets  # a dependency of the package: missing it is a failure, not a skip

from lightning_less.selection.outputs import SELECTED_DATASET, StaleSelectionError, read_selection  # noqa: E402
from lightning_less.selection.runner import run_selection  # noqa: E402
from tests.data.test_sources import ROWS, dataset_of, write  # noqa: E402

TARGETS = [{"subtask": "cats", "prompt": "cats cats question", "completion": "answer"},
           {"subtask": "birds", "prompt": "birds and dogs", "completion": "yes"}]


@pytest.mark.parametrize("method", ["random", "bm25", "dsir"])
@pytest.mark.parametrize("kind", ["dir", "parquet"])
def test_dataset_input_selects_as_the_jsonl_of_its_rows(tmp_path, method, kind):
    # Catches: rows read in another order, another text per row, or selected.jsonl written other than the rows.
    targets = tmp_path / "targets.jsonl"
    targets.write_text("".join(json.dumps(t) + "\n" for t in TARGETS))
    (tmp_path / "j").mkdir()
    (tmp_path / "d").mkdir()
    jsonl, data = write(tmp_path / "j", ROWS, "jsonl"), write(tmp_path / "d", ROWS, kind)
    a = read_selection(run_selection(method, [jsonl], [str(targets)], tmp_path / "sel_j", count=3, seed=1))
    b = read_selection(run_selection(method, [data], [str(targets)], tmp_path / "sel_d", count=3, seed=1))
    assert a.selected.tolist() == b.selected.tolist()
    np.testing.assert_array_equal(a.scores, b.scores)
    assert (b.path / "selected.jsonl").read_bytes() == (a.path / "selected.jsonl").read_bytes()
    saved = datasets.load_from_disk(str(b.path / SELECTED_DATASET))
    assert saved.to_list() == dataset_of(ROWS).select(b.selected.tolist()).to_list()
    assert not (a.path / SELECTED_DATASET).exists()
    read_selection(b.path, records=__import__("lightning_less").read_records([data]))  # checks against the pool pass


def test_a_changed_dataset_makes_the_selection_stale(tmp_path):
    # Catches: a dataset fingerprinted by name, so a changed dataset would reuse the old selection.
    import shutil

    data = write(tmp_path, ROWS, "dir")
    out = run_selection("random", [data], None, tmp_path / "sel", count=2)
    assert run_selection("random", [data], None, out, count=2) == out  # unchanged: reused
    shutil.rmtree(data)
    dataset_of(ROWS[::-1]).save_to_disk(data)
    with pytest.raises(StaleSelectionError, match="pool files changed"):
        run_selection("random", [data], None, out, count=2)
    run_selection("random", [data], None, out, count=2, overwrite=True)
    assert datasets.load_from_disk(str(out / SELECTED_DATASET)).num_rows == 2
