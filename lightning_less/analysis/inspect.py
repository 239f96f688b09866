"""A terminal view of one target subtask's ranking in a selection (``lightning-less inspect``).

``scores.csv`` holds one score per pool example for each target *subtask*
(``score/<subtask>``), the mean over the subtask's target examples; the score of a pool
example against one single target example is not stored and cannot be recomputed
without the gradient (or hidden-state) features. So ``--subtask`` shows that subtask's
top-k pool examples, and ``--target_index`` shows the ranking of the subtask the target
example belongs to, and says so.

:func:`inspect` returns an :class:`InspectView`: its ``rows`` for programs, and a rich
rendering (``__rich__``) whose table fits the terminal width for the command line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from lightning_less.analysis.formatting import one_line
from lightning_less.analysis.inputs import load_pool, load_targets
from lightning_less.analysis.stats import SCORE_PREFIX, has_scores, ranking, subtask_columns, subtask_label
from lightning_less.data.records import Record
from lightning_less.errors import InputError
from lightning_less.selection.outputs import read_selection

if TYPE_CHECKING:
    from rich.console import Group

log = logging.getLogger(__name__)

# (header, justify) of the table's columns; every column but the text keeps to one line.
COLUMNS = (("rank", "right"), ("index", "right"), ("score", "right"), ("id", "left"), ("source", "left"),
           ("selected", "right"), ("text", "left"))


class InspectRow(NamedTuple):
    """One ranked pool example."""

    rank: int
    """Position in the subtask's ranking, from 1."""
    index: int
    """Pool index (over the pool files, in order)."""
    score: float
    """The example's value in the ranking column."""
    id: str
    """The record id, from ``scores.csv``."""
    source: str
    """The record source, from ``scores.csv``."""
    selected_rank: int | None
    """The example's rank in the selection, ``None`` when it was not selected."""
    text: str | None
    """The record text, ``None`` when the pool records are unavailable."""


@dataclass(frozen=True)
class InspectView:
    """The top-k pool examples of one target subtask, and what a reader needs to know about them."""

    selection: Path
    """The selection directory."""
    method: str | None
    """The selection method (from the manifest)."""
    subtask: str
    """The target subtask shown."""
    column: str
    """The ``scores.csv`` column that ranks the pool."""
    n_scored: int
    """Pool examples with a score in ``column``."""
    rows: list[InspectRow]
    """The ranking: descending score, ties by ascending pool index."""
    target: Record | None = None
    """The target example asked for with ``target_index``."""
    notes: list[str] = field(default_factory=list)
    """What the ranking is (when it is not simply the subtask's own column)."""
    warnings: list[str] = field(default_factory=list)
    """Recorded input files that were skipped or have changed."""

    def __rich__(self) -> Group:
        """A header and a one-line-per-example table that fits the console width (texts are cut to fit)."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        head = [
            Text.assemble(("selection ", "bold"), str(self.selection), ("  method ", "bold"), str(self.method)),
            Text.assemble(("subtask ", "bold"), self.subtask, ("  ranked by ", "bold"), self.column,
                          f"  (top {len(self.rows)} of {self.n_scored} scored pool examples)"),
        ]
        if self.target is not None:
            head.append(Text.assemble(("target ", "bold"), one_line(self.target.text, 300)))
        head += [Text(note, style="yellow") for note in [*self.notes, *self.warnings]]
        table = Table()
        for name, justify in COLUMNS:
            # Only the text column may shrink: rich narrows wrappable columns first to fit the width.
            table.add_column(name, justify=justify, no_wrap=name != "text", overflow="ellipsis")
        for r in self.rows:
            text = one_line(r.text) if r.text is not None else "(pool records unavailable)"
            cells = (str(r.rank), str(r.index), f"{r.score:.6g}", r.id, r.source,
                     "" if r.selected_rank is None else f"#{r.selected_rank}")
            # Text objects, not strings: ids and record texts are not rich markup.
            table.add_row(*(Text(c) for c in cells), Text(text, no_wrap=True, overflow="ellipsis"))
        return Group(*head, table)


def _ranking_column(table: dict[str, Any], subtask: str, method: str | None, path: Path, notes: list[str]) -> str:
    """The column that ranks the pool for ``subtask`` (see :func:`inspect`'s ``Raises``)."""
    columns = subtask_columns(table)
    own = f"{SCORE_PREFIX}{subtask}"
    if own in table and has_scores(table[own]):
        return own
    scored = has_scores(table["score"])
    if not columns and scored:
        notes.append("this selection has no per-subtask scores: ranking by the aggregate 'score' column.")
        return "score"
    if not columns:
        raise InputError(f"{path}: method {method!r} wrote no scores; there is no ranking to inspect")
    raise InputError(f"unknown subtask {subtask!r} (--subtask); this selection has scores for: {', '.join(columns)}")


def inspect(
    *,
    selection: str,
    target_index: int | None = None,
    subtask: str | None = None,
    top_k: int = 10,
    targets: list[str] | str | None = None,
    pool: list[str] | str | None = None,
) -> InspectView:
    """Show the top-k pool examples of one target subtask of a selection, with their scores.

    Args:
        selection: the selection directory.
        target_index: a target example's index (over the target files, in order); shows the
            ranking of its subtask (per-example scores need the gradient features). Needs the
            targets (``targets`` or the manifest's ``inputs.targets``). Exclusive with ``subtask``.
        subtask: the target subtask whose ranking (``score/<subtask>``) is shown.
        top_k: number of pool examples to show.
        targets: target jsonl file(s); default: the manifest's ``inputs.targets``.
        pool: pool jsonl file(s) for the texts; default: the pool files recorded in the manifest.

    Returns:
        The view: ``rows`` in ranking order (descending score, ties by ascending pool
        index), and a rich rendering of them.

    Raises:
        InputError: without exactly one of ``target_index`` / ``subtask``, for a ``top_k``
            that is not a positive integer, an unknown subtask, an out-of-range target
            index or one without targets, or a selection without scores.
    """
    if (target_index is None) == (subtask is None):
        raise InputError("give exactly one of --target_index and --subtask")
    if isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1:
        raise InputError(f"--top_k must be a positive integer, got {top_k!r}")
    log.info("reading selection %s", selection)
    sel = read_selection(Path(selection))
    method = sel.manifest.get("method")
    warnings: list[str] = []
    notes: list[str] = []

    target = None
    if target_index is not None:
        target_records, targets_note = load_targets(sel.manifest, targets, warnings)
        if target_records is None:
            raise InputError(f"--target_index needs the target examples: {targets_note}")
        if int(target_index) != target_index or not 0 <= target_index < len(target_records):
            raise InputError(f"--target_index must be in [0, {len(target_records)}) (the number of target examples), "
                             f"got {target_index}")
        target = target_records[int(target_index)]
        subtask = subtask_label(target)
        notes.append(
            f"target example {target_index} (id {target.id}) belongs to subtask {subtask!r}. Per-example scores "
            "cannot be recomputed from a selection directory (they need the gradient features): "
            f"showing the ranking of subtask {subtask!r}, the mean over its target examples."
        )
    assert subtask is not None  # given, or the target's
    column = _ranking_column(sel.table, subtask, method, sel.path, notes)

    sel, records, _ = load_pool(sel, pool, warnings)
    table = sel.table
    rows = []
    for position, row in enumerate(ranking(table[column], table["index"])[: int(top_k)], start=1):
        idx = int(table["index"][row])
        rows.append(InspectRow(
            rank=position, index=idx, score=float(table[column][row]), id=table["id"][row], source=table["source"][row],
            selected_rank=int(table["rank"][row]) if table["selected"][row] else None,
            text=records[idx].text if records is not None else None,
        ))
    return InspectView(sel.path, method, subtask, column, int(np.isfinite(table[column]).sum()), rows, target, notes,
                       warnings)
