"""`inspect` and `report` on a selection of the demo's own data."""

import numpy as np

from lightning_less.analysis.inspect import inspect
from lightning_less.analysis.report import build_report
from lightning_less.data.demo import generate_demo_data
from lightning_less.data.records import read_records
from lightning_less.selection.outputs import read_selection
from lightning_less.selection.runner import run_selection


def test_inspect_and_report_on_the_demo(tmp_path):
    paths = generate_demo_data(tmp_path / "data", seed=0, pool_size=400)
    sel_dir = run_selection("bm25", paths["pool"], [paths["targets"]], tmp_path / "bm25", fraction=0.05)
    rows = inspect(selection=str(sel_dir), subtask="last_letter_es", top_k=5).rows
    pool = read_records(paths["pool"])
    sel = read_selection(sel_dir)
    column = sel.table["score/last_letter_es"]
    expected = np.lexsort((np.arange(len(column)), -column))[:5]
    assert [r.index for r in rows] == list(expected)
    # On this data the lexical method's top examples are the Spanish ones.
    assert all(pool[r.index].source.endswith("_es") for r in rows)
    files = build_report(str(sel_dir), output=str(tmp_path / "report"))
    html = files["index"].read_text(encoding="utf-8")
    assert f'data-value="{len(sel.selected)}"' in html and "last_letter_es" in html
