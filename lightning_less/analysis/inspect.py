"""A terminal view of one target subtask's ranking in a selection (``lightning-less inspect``).

``scores.csv`` holds one score per pool example for each target *subtask*
(``score/<subtask>``), the mean over the subtask's target examples; the score of a pool
example against one single target example is not stored and cannot be recomputed
without the gradient (or hidden-state) features. So ``--subtask`` shows that subtask's
top-k pool examples, and ``--target_index`` shows the ranking of the subtask the target
example belongs to, and says so.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from lightning_less.analysis.report import (
    has_scores,
    load_pool,
    load_targets,
    ranking,
    subtask_columns,
    subtask_label,
)
from lightning_less.selection.outputs import read_selection

log = logging.getLogger(__name__)

Row = tuple[int, int, float, str, str]


def _one_line(text: str, limit: int = 120) -> str:
    flat = " ⏎ ".join(part for part in text.splitlines() if part.strip())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def inspect_selection(
    selection: str | os.PathLike,
    target_index: int | None = None,
    subtask: str | None = None,
    top_k: int = 10,
    targets: Any = None,
    pool: Any = None,
    console: Any = None,
) -> list[Row]:
    """Print the top-k pool examples of one target subtask and return them.

    Args:
        selection: the selection directory.
        target_index: a target example's index (over the target files, in order); its
            subtask's ranking is shown. Needs the targets (``targets`` or the manifest's
            ``inputs.targets``). Exclusive with ``subtask``.
        subtask: the target subtask whose ranking (``score/<subtask>``) is shown.
        top_k: how many pool examples to show.
        targets: target jsonl file(s); default: the manifest's ``inputs.targets``.
        pool: pool jsonl file(s) for the texts; default: the manifest's pool files.
        console: a :class:`rich.console.Console` to print to (default: a new one).

    Returns:
        ``[(rank, pool index, score, id, text)]`` in ranking order: descending score,
        ties by ascending pool index; ``text`` is empty when the pool records are unavailable.

    Raises:
        ValueError: without exactly one of ``target_index`` / ``subtask``, for an unknown
            subtask or out-of-range target index, or for a selection without scores.
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    if (target_index is None) == (subtask is None):
        raise ValueError("give exactly one of target_index and subtask")
    if int(top_k) != top_k or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    console = console or Console()
    log.info("reading selection %s", selection)
    sel = read_selection(Path(selection))
    method = sel.manifest.get("method")
    warnings: list[str] = []
    notes: list[str] = []

    target = None
    if target_index is not None:
        target_records, targets_note = load_targets(sel.manifest, targets, warnings)
        if target_records is None:
            raise ValueError(f"--target_index needs the target examples: {targets_note}")
        if int(target_index) != target_index or not 0 <= target_index < len(target_records):
            raise ValueError(f"target_index must be in [0, {len(target_records)}), got {target_index}")
        target = target_records[int(target_index)]
        subtask = subtask_label(target)
        notes.append(
            f"target example {target_index} (id {target.id}) belongs to subtask {subtask!r}. Per-example scores "
            "cannot be recomputed from a selection directory (they need the gradient features): "
            f"showing the ranking of subtask {subtask!r}, the mean over its target examples."
        )

    table = sel.table
    columns = subtask_columns(table)
    if f"score/{subtask}" in table and has_scores(table[f"score/{subtask}"]):
        column = f"score/{subtask}"
    elif not columns and has_scores(table["score"]):
        column = "score"
        notes.append("this selection has no per-subtask scores: ranking by the aggregate 'score' column.")
    elif not has_scores(table["score"]) and not columns:
        raise ValueError(f"{sel.path}: method {method!r} wrote no scores; there is no ranking to inspect")
    else:
        raise ValueError(f"unknown subtask {subtask!r}; this selection has scores for: {', '.join(columns)}")

    sel, records, _ = load_pool(sel, pool, warnings)
    table = sel.table
    order = ranking(table[column], table["index"])[: int(top_k)]
    rows: list[Row] = []
    for position, row in enumerate(order, start=1):
        idx = int(table["index"][row])
        text = records[idx].text if records is not None else ""
        rows.append((position, idx, float(table[column][row]), table["id"][row], text))

    console.print(Text.assemble(("selection ", "bold"), str(sel.path), ("  method ", "bold"), str(method)))
    console.print(Text.assemble(("subtask ", "bold"), str(subtask), ("  ranked by ", "bold"), column,
                                f"  (top {len(rows)} of {int(np.isfinite(table[column]).sum())} scored pool examples)"))
    if target is not None:
        console.print(Text.assemble(("target ", "bold"), _one_line(target.text, 300)))
    for note in [*notes, *warnings]:
        console.print(Text(note, style="yellow"))
    view = Table(show_lines=False)
    for name, justify in (("rank", "right"), ("index", "right"), ("score", "right"), ("id", "left"),
                          ("source", "left"), ("selected", "right"), ("text", "left")):
        view.add_column(name, justify=justify, overflow="fold" if name == "text" else "ellipsis")
    for (position, idx, score, rid, text), row in zip(rows, order):
        chosen = f"#{int(table['rank'][row])}" if table["selected"][row] else ""
        view.add_row(*(Text(v) for v in (str(position), str(idx), f"{score:.6g}", rid, table["source"][row], chosen,
                                         _one_line(text) if records is not None else "(pool records unavailable)")))
    console.print(view)
    return rows
