"""A damaged or half-written selection directory is named and refused, never read as a smaller selection."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lightning_less.data.records import read_records
from lightning_less.errors import IncompatibleError, InputError, MissingInputError
from lightning_less.selection.budget import budget_info
from lightning_less.selection.outputs import read_selection, write_selection
from tests.faults.conftest import truncate
from tests.helpers import qa_records, write_jsonl


@pytest.fixture
def selection(tmp_path):
    records = read_records([write_jsonl(tmp_path / "pool.jsonl", qa_records(9))])
    scores = np.linspace(0.0, 1.0, 9)
    out = write_selection(tmp_path / "sel", records, [8, 7, 6], scores, "less", budget_info(9, count=3), seed=0)
    return out, records


DAMAGE = {
    "manifest truncated": ("manifest.json", lambda p: truncate(p, 40), InputError, "not valid JSON"),
    "manifest not UTF-8": ("manifest.json", lambda p: p.write_bytes(b"\xff{"), InputError, "not valid JSON"),
    "manifest key missing": ("manifest.json", lambda p: p.write_text(json.dumps({"format_version": 1})), InputError,
                             "'n_pool'"),
    "manifest of another format": ("manifest.json",
                                   lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "format_version": 7})),
                                   IncompatibleError, "format_version 7"),
    "scores truncated mid-row": ("scores.csv", lambda p: truncate(p, -9), InputError, "fields, the header has"),
    "scores lost whole rows": ("scores.csv", lambda p: p.write_text("\n".join(p.read_text().splitlines()[:5]) + "\n"),
                               InputError, "does not match manifest.json"),
    "scores empty": ("scores.csv", lambda p: truncate(p, 0), InputError, "columns"),
    "scores garbled number": ("scores.csv", lambda p: p.write_text(p.read_text().replace("\n0,", "\nzero,", 1)),
                              InputError, "'index'"),
    "scores missing": ("scores.csv", lambda p: p.unlink(), MissingInputError, "is missing"),
    "selected lines missing": ("selected.jsonl", lambda p: p.unlink(), MissingInputError, "is missing"),
}


@pytest.mark.parametrize("cell", list(DAMAGE))
def test_damaged_selection_is_named(selection, cell):
    out, records = selection
    name, damage, error, says = DAMAGE[cell]
    assert read_selection(out, records).selected.tolist() == [8, 7, 6]
    damage(out / name)
    with pytest.raises(error) as err:
        read_selection(out, records)
    assert str(out / name) in str(err.value) and says in str(err.value), str(err.value)


def test_interrupted_write_is_named_as_such(selection):
    out, records = selection
    (out / "manifest.json").unlink()  # what a writer killed between its renames leaves (the manifest is last)
    with pytest.raises(MissingInputError, match="manifest.json is missing"):
        read_selection(out, records)
    with pytest.raises(FileExistsError, match="incomplete selection .* an earlier write was interrupted"):
        write_selection(out, records, [8, 7, 6], None, "random", budget_info(9, count=3), seed=0)
