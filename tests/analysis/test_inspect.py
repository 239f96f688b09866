"""``lightning-less inspect``: one target subtask's top-k pool examples from a selection."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console

from lightning_less.analysis.formatting import one_line
from lightning_less.analysis.inspect import InspectView, inspect
from lightning_less.data.records import read_records
from lightning_less.errors import InputError
from tests.analysis.selections import SUBTASKS, make_pool, make_random_selection, make_scored_selection, read_scores_csv


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    return make_scored_selection(tmp_path_factory.mktemp("inspect"))


def render(view: InspectView, width: int = 400) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None).print(view)
    return buf.getvalue()


def expected(rows: list[dict], subtask: str, k: int) -> list[tuple[int, float, str]]:
    """(index, score, id) of the top ``k`` rows of scores.csv by ``score/<subtask>``, ties by index (a plain sort)."""
    column = f"score/{subtask}"
    ordered = sorted(rows, key=lambda r: (-float(r[column]), int(r["index"])))[:k]
    return [(int(r["index"]), float(r[column]), r["id"]) for r in ordered]


def table_cells(out: str) -> list[list[str]]:
    """The cells of each body row of a rendered rich table (rows that start with a rank)."""
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if line.startswith("│")]
    return [c for c in cells if c and c[0].isdigit()]


@pytest.mark.parametrize("subtask", SUBTASKS)
@pytest.mark.parametrize("k", [1, 4, 10, 100])
def test_inspect_subtask_order_matches_scores_csv(scored, subtask, k):
    view = inspect(selection=str(scored["dir"]), subtask=subtask, top_k=k)
    csv_rows = read_scores_csv(scored["dir"] / "scores.csv")
    assert [(r.index, r.score, r.id) for r in view.rows] == expected(csv_rows, subtask, k)
    assert [r.rank for r in view.rows] == list(range(1, min(k, 30) + 1))
    pool = scored["pool"]
    assert [r.text for r in view.rows] == [pool[r.index].text for r in view.rows]
    by_index = {int(r["index"]): r for r in csv_rows}
    for r in view.rows:  # source and selection rank are scores.csv's own
        row = by_index[r.index]
        assert r.source == row["source"]
        assert r.selected_rank == (int(row["rank"]) if row["selected"] == "1" else None)
    assert view.column == f"score/{subtask}" and view.n_scored == 30 and view.method == "less"
    out = render(view)
    assert str(scored["dir"]) in out and "less" in out and f"score/{subtask}" in out


def test_inspect_ties_by_index(scored):
    rows = inspect(selection=str(scored["dir"]), subtask="arith", top_k=3).rows
    assert [r.index for r in rows] == [1, 5, 20] and len({r.score for r in rows}) == 1


def test_inspect_target_index_shows_its_subtask(scored):
    # Targets come from the manifest's inputs.targets: 3 "arith" then 2 geo examples.
    view = inspect(selection=str(scored["dir"]), target_index=3, top_k=5)
    assert view.rows == inspect(selection=str(scored["dir"]), subtask=SUBTASKS[1], top_k=5).rows
    assert view.subtask == SUBTASKS[1] and view.target is not None and view.target.id == "t-geo0"
    out = render(view)
    assert "t-geo0" in out and "cannot be recomputed" in out and SUBTASKS[1] in out
    # Explicit targets work too.
    rows0 = inspect(selection=str(scored["dir"]), target_index=0, top_k=2, targets=[str(scored["targets"])]).rows
    assert [r.index for r in rows0] == [1, 5]


def test_inspect_errors(scored, tmp_path):
    sel = str(scored["dir"])
    with pytest.raises(InputError, match="exactly one"):
        inspect(selection=sel)
    with pytest.raises(InputError, match="exactly one"):
        inspect(selection=sel, target_index=0, subtask="arith")
    with pytest.raises(InputError, match="unknown subtask 'nope'"):
        inspect(selection=sel, subtask="nope")
    with pytest.raises(InputError, match=r"target_index must be in \[0, 5\)"):
        inspect(selection=sel, target_index=5)
    with pytest.raises(InputError, match="top_k must be a positive integer"):
        inspect(selection=sel, subtask="arith", top_k=0)
    rnd = str(make_random_selection(tmp_path)["dir"])
    with pytest.raises(InputError, match="no scores"):
        inspect(selection=rnd, subtask="arith")
    with pytest.raises(InputError, match="needs the target examples"):
        inspect(selection=rnd, target_index=0)


def test_inspect_aggregate_score_only(tmp_path):
    from lightning_less.selection.budget import budget_info, top_k
    from lightning_less.selection.outputs import write_selection

    pool = read_records(make_pool(tmp_path / "data"))
    scores = np.round(np.random.default_rng(2).normal(size=len(pool)), 1)  # ties
    write_selection(tmp_path / "sel", pool, top_k(scores, 4), scores, "bm25", budget_info(len(pool), count=4), seed=None)
    view = inspect(selection=str(tmp_path / "sel"), subtask="anything", top_k=8)
    want = sorted(range(len(pool)), key=lambda i: (-scores[i], i))[:8]
    assert [r.index for r in view.rows] == want and [r.score for r in view.rows] == [float(scores[i]) for i in want]
    assert view.column == "score" and "no per-subtask scores" in render(view)


def test_inspect_without_pool_records(scored, tmp_path):
    import shutil

    # The recorded pool files are gone: the ranking is still shown, without texts, and says why.
    fx = make_scored_selection(tmp_path)
    shutil.move(str(tmp_path / "data"), tmp_path / "moved")
    view = inspect(selection=str(fx["dir"]), subtask="arith", top_k=3)
    assert [r.index for r in view.rows] == [1, 5, 20] and all(r.text is None for r in view.rows)
    out = render(view)
    assert "(pool records unavailable)" in out and any("not found" in w for w in view.warnings)


@pytest.mark.parametrize("width", [60, 100])
def test_inspect_table_fits_the_width(scored, width):
    view = inspect(selection=str(scored["dir"]), subtask=SUBTASKS[1], top_k=6)
    out = render(view, width)
    assert max(len(line) for line in out.splitlines()) <= width
    cells = table_cells(out)
    # One line per example; only the text is cut, the index and id columns stay whole.
    assert [(int(c[1]), c[3]) for c in cells] == [(r.index, r.id) for r in view.rows]
    # Each text is its one-line form, or a start of it ending in an ellipsis; some are cut at this width.
    for c, r in zip(cells, view.rows):
        full = one_line(r.text).strip()  # table_cells strips the cell padding
        assert c[6] == full or (c[6].endswith("…") and full.startswith(c[6][:-1]) and len(c[6]) < len(full))
    assert any(c[6] != one_line(r.text).strip() for c, r in zip(cells, view.rows))
    assert [c[6] for c in table_cells(render(view, 400))] == [one_line(r.text).strip() for r in view.rows]


def test_inspect_cli(scored, capsys, monkeypatch):
    from lightning_less.cli import main

    monkeypatch.setenv("COLUMNS", "400")
    main(["inspect", "--selection", str(scored["dir"]), "--subtask", "arith", "--top_k", "3"])
    out = capsys.readouterr().out
    assert str(scored["dir"]) in out and "method less" in out
    table = [(int(c[1]), c[3]) for c in table_cells(out)]  # (index, id) of each ranked row
    want = expected(read_scores_csv(scored["dir"] / "scores.csv"), "arith", 3)
    assert table == [(i, rid) for i, _, rid in want]
    assert out.count("method less") == 1  # printed once
