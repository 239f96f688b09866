"""Selection directory: byte-identical lines, global top-k over files, stale outputs refused."""

import csv
import hashlib
import json

import numpy as np
import pytest

import lightning_less
from lightning_less.data.records import read_records
from lightning_less.selection.budget import budget_info, top_k
from lightning_less.selection.outputs import (
    StaleSelectionError,
    read_selection,
    write_selection,
)

# Tricky but valid lines: raw UTF-8, JSON escapes, spaces inside and after the object.
FILE_A = [
    '{"prompt": "Grüße, 世界 🌍", "completion": "ok"}',
    '{"prompt": "tab\\there \\"quoted\\" \\u00e9\\n", "completion": "x", "id": "a2"}   ',
    '{ "prompt" : "spaced",   "completion" : "y" }',
]
FILE_B = [  # written with CRLF line endings
    '{"instruction": "crlf one", "input": "", "output": "z"}',
    '{"messages": [{"role": "user", "content": "back\\\\slash \\/"}, {"role": "assistant", "content": "w"}]}',
]
FILE_C = [
    '{"prompt": "c zero", "completion": "1"}\t',
    '{"prompt": "c one", "completion": "2", "dataset": "src-c"}',
]


@pytest.fixture
def pool(tmp_path):
    paths = []
    for name, lines, ending in (("a", FILE_A, "\n"), ("b", FILE_B, "\r\n"), ("c", FILE_C, "\n")):
        path = tmp_path / f"{name}.jsonl"
        # A blank line in the middle: line numbers must still point at the right bytes.
        body = (ending.join(lines[:1] + [""] + lines[1:]) + ending).encode("utf-8")
        path.write_bytes(body)
        paths.append(path)
    return paths, read_records(paths)


def _write(out, records, selected, scores, **kw):
    return write_selection(
        out,
        records,
        selected,
        scores,
        method=kw.pop("method", "less"),
        budget=budget_info(len(records), count=len(selected)),
        seed=kw.pop("seed", None),
        inputs={"targets": ["t.jsonl"]},
        params={"aggregation": "max_subtask_mean"},
        **kw,
    )


def test_selected_lines_are_byte_identical_and_global(pool, tmp_path):
    paths, records = pool
    all_lines = FILE_A + FILE_B + FILE_C
    assert len(records) == 7
    # The best scores lie in three different files: top-k is global over the pool.
    scores = np.array([0.1, 0.9, 0.2, 0.5, 0.3, 0.9, 0.05], dtype=np.float32)
    selected = top_k(scores, 4)
    assert selected.tolist() == [1, 5, 3, 4]
    out = _write(tmp_path / "sel", records, selected, scores, per_subtask=(["x", "y"], np.c_[scores, -scores]))

    expected = b"".join(all_lines[i].encode("utf-8") + b"\n" for i in selected)
    assert (out / "selected.jsonl").read_bytes() == expected

    with open(out / "scores.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["index", "path", "line", "id", "source", "score", "score/x", "score/y", "selected", "rank"]
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(7)]
    assert rows[2][2:6] == ["3", "a2", "a", "0.9"]  # line 3: after the blank line
    assert [r[-2] for r in rows[1:]] == ["0", "1", "0", "1", "1", "1", "0"]
    assert [r[-1] for r in rows[1:]] == ["", "1", "", "3", "4", "2", ""]
    assert rows[7][4] == "src-c"

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert manifest["method"] == "less"
    assert manifest["budget"] == {"fraction": None, "count": 4, "k": 4}
    assert manifest["n_pool"] == 7 and manifest["n_selected"] == 4
    assert manifest["library_version"] == lightning_less.__version__
    assert manifest["inputs"]["targets"] == ["t.jsonl"]
    assert [f["sha256"] for f in manifest["inputs"]["pool"]] == [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in paths
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".sel.tmp")]

    sel = read_selection(out, records)
    assert sel.selected.tolist() == [1, 5, 3, 4]
    np.testing.assert_allclose(sel.scores, scores, rtol=1e-7)
    np.testing.assert_allclose(sel.table["score/y"], -scores, rtol=1e-7)


def test_unscored_method(pool, tmp_path):
    _, records = pool
    out = _write(tmp_path / "sel", records, np.array([0, 6]), None, method="random", seed=3)
    sel = read_selection(out, records)
    assert sel.selected.tolist() == [0, 6]
    assert np.isnan(sel.scores).all()
    assert sel.manifest["seed"] == 3


def test_existing_outputs_refused_then_replaced(pool, tmp_path):
    _, records = pool
    scores = np.arange(7, dtype=np.float64)
    out = _write(tmp_path / "sel", records, top_k(scores, 3), scores)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="sel"):
        _write(out, records, top_k(-scores, 2), -scores, method="bm25")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched

    _write(out, records, top_k(-scores, 2), -scores, method="bm25", overwrite=True)
    sel = read_selection(out, records)
    assert sel.manifest["method"] == "bm25"
    assert sel.selected.tolist() == [0, 1]
    assert (out / "selected.jsonl").read_bytes().count(b"\n") == 2
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "scores.csv", "selected.jsonl"]

    # A single leftover file also counts as an existing selection.
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "scores.csv").write_text("stale")
    with pytest.raises(FileExistsError, match="partial"):
        _write(partial, records, [0], None)


def test_changed_pool_detected(pool, tmp_path):
    paths, records = pool
    out = _write(tmp_path / "sel", records, np.array([2, 3]), None)
    read_selection(out, records)
    with open(paths[1], "ab") as f:
        f.write(b'{"prompt": "new", "completion": "n"}\r\n')
    with pytest.raises(StaleSelectionError, match="b.jsonl changed"):
        read_selection(out, read_records(paths))
    read_selection(out)  # without records nothing can be checked


def test_bad_selections_refused(pool, tmp_path):
    _, records = pool
    with pytest.raises(ValueError, match="more than once"):
        _write(tmp_path / "dup", records, [1, 2, 1], None)
    with pytest.raises(ValueError, match=r"in \[0, 7\)"):
        _write(tmp_path / "range", records, [7], None)
    with pytest.raises(ValueError, match="shape"):
        _write(tmp_path / "shape", records, [1], np.zeros(6))
    assert not (tmp_path / "dup" / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        read_selection(tmp_path / "dup")
