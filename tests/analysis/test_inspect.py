"""``lightning-less inspect``: one target subtask's top-k pool examples from a selection."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from lightning_less.data.records import read_records
from lightning_less.analysis.inspect import inspect_selection
from tests.analysis.test_report import SUBTASKS, make_random_selection, make_scored_selection, read_scores_csv


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    return make_scored_selection(tmp_path_factory.mktemp("inspect"))


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=400, color_system=None), buf


def expected(rows: list[dict], subtask: str, k: int) -> list[tuple[int, float, str]]:
    column = f"score/{subtask}"
    ordered = sorted(rows, key=lambda r: (-float(r[column]), int(r["index"])))[:k]
    return [(int(r["index"]), float(r[column]), r["id"]) for r in ordered]


@pytest.mark.parametrize("subtask", SUBTASKS)
@pytest.mark.parametrize("k", [1, 4, 10, 100])
def test_inspect_subtask_order_matches_scores_csv(scored, subtask, k):
    console, buf = _console()
    rows = inspect_selection(scored["dir"], subtask=subtask, top_k=k, console=console)
    csv_rows = read_scores_csv(scored["dir"] / "scores.csv")
    assert [(i, s, rid) for _, i, s, rid, _ in rows] == expected(csv_rows, subtask, k)
    assert [r[0] for r in rows] == list(range(1, min(k, 30) + 1))
    pool = scored["pool"]
    assert [text for *_, text in rows] == [pool[i].text for _, i, *_ in rows]
    out = buf.getvalue()
    assert str(scored["dir"]) in out and "less" in out and f"score/{subtask}" in out


def test_inspect_ties_by_index(scored):
    rows = inspect_selection(scored["dir"], subtask="arith", top_k=3, console=_console()[0])
    assert [r[1] for r in rows] == [1, 5, 20] and len({r[2] for r in rows}) == 1


def test_inspect_target_index_shows_its_subtask(scored):
    console, buf = _console()
    # Targets come from the manifest's inputs.targets: 3 "arith" then 2 geo examples.
    rows = inspect_selection(scored["dir"], target_index=3, top_k=5, console=console)
    assert rows == inspect_selection(scored["dir"], subtask=SUBTASKS[1], top_k=5, console=_console()[0])
    out = buf.getvalue()
    assert "t-geo0" in out and "cannot be recomputed" in out and SUBTASKS[1] in out
    # Explicit targets work too.
    rows0 = inspect_selection(scored["dir"], target_index=0, top_k=2, targets=[str(scored["targets"])], console=_console()[0])
    assert [r[1] for r in rows0] == [1, 5]


def test_inspect_errors(scored, tmp_path):
    console = _console()[0]
    with pytest.raises(ValueError, match="exactly one"):
        inspect_selection(scored["dir"], console=console)
    with pytest.raises(ValueError, match="exactly one"):
        inspect_selection(scored["dir"], target_index=0, subtask="arith", console=console)
    with pytest.raises(ValueError, match="unknown subtask 'nope'"):
        inspect_selection(scored["dir"], subtask="nope", console=console)
    with pytest.raises(ValueError, match=r"target_index must be in \[0, 5\)"):
        inspect_selection(scored["dir"], target_index=5, console=console)
    rnd = make_random_selection(tmp_path)
    with pytest.raises(ValueError, match="no scores"):
        inspect_selection(rnd["dir"], subtask="arith", console=console)
    with pytest.raises(ValueError, match="needs the target examples"):
        inspect_selection(rnd["dir"], target_index=0, console=console)


def test_inspect_aggregate_score_only(tmp_path):
    import numpy as np

    from lightning_less.selection.budget import budget_info, top_k
    from lightning_less.selection.outputs import write_selection
    from tests.analysis.test_report import make_pool

    pool = read_records(make_pool(tmp_path / "data"))
    scores = np.round(np.random.default_rng(2).normal(size=len(pool)), 1)  # ties
    write_selection(tmp_path / "sel", pool, top_k(scores, 4), scores, "bm25", budget_info(len(pool), count=4), seed=None)
    console, buf = _console()
    rows = inspect_selection(tmp_path / "sel", subtask="anything", top_k=8, console=console)
    want = sorted(range(len(pool)), key=lambda i: (-scores[i], i))[:8]
    assert [r[1] for r in rows] == want and [r[2] for r in rows] == [float(scores[i]) for i in want]
    assert "no per-subtask scores" in buf.getvalue()


def test_inspect_cli(scored, capsys, monkeypatch):
    from lightning_less.cli import main

    monkeypatch.setenv("COLUMNS", "400")
    main(["inspect", "--selection", str(scored["dir"]), "--subtask", "arith", "--top_k", "3"])
    out = capsys.readouterr().out
    assert str(scored["dir"]) in out and "method less" in out
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if line.startswith("│")]
    table = [(int(c[1]), c[3]) for c in cells if c[0]]  # (index, id) of each ranked row
    want = expected(read_scores_csv(scored["dir"] / "scores.csv"), "arith", 3)
    assert table == [(i, rid) for i, _, rid in want]
