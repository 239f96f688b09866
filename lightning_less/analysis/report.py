"""An HTML report on a selection directory (``lightning-less report``).

The report is one self-contained page, ``index.html``, that renders offline: its CSS
is inline and every plot is embedded as a base64 ``data:`` URI (each plot is also
written next to it as a PNG file). It shows

* a summary table (method, budget, ``k``, ``n_pool``, seed, score statistics of the
  selected examples and of the pool);
* (a) the score distribution over the pool, the lowest selected score marked;
* (b) the composition of the selection by ``source`` against the pool's;
* (c) the per-subtask score distributions (the ``score/<subtask>`` columns);
* (d) the length distribution (whitespace tokens of the record text) of the selected
  examples against the pool's;
* (e) for each target subtask, the top-scoring pool examples beside that subtask's
  target examples.

Every number on the page comes from ``scores.csv`` (and the manifest for method,
budget and seed); see :mod:`~lightning_less.analysis.page` for how tools read them
back. Methods without scores (random, S2L) still get a report: composition and
lengths, with "no scores for this method" in place of score plots. Where the pool and
target records come from: :mod:`~lightning_less.analysis.inputs`.

This module only puts the pieces together: reading (``inputs``), numbers (``stats``),
figures (``plots``) and the page (``page``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from lightning_less.analysis.inputs import SelectionInputs, load_inputs
from lightning_less.analysis.page import render_html
from lightning_less.analysis.plots import PLOT_FILES, plot_composition, plot_lengths, plot_scores, plot_subtasks
from lightning_less.analysis.stats import composition, summary_numbers
from lightning_less.errors import InputError

log = logging.getLogger(__name__)


def _check_top_n(top_n: int) -> int:
    if isinstance(top_n, bool) or int(top_n) != top_n or top_n < 1:
        raise InputError(f"--top_n must be a positive integer (examples shown per target subtask), got {top_n!r}")
    return int(top_n)


def _build(selection: str | os.PathLike[str], output: str | os.PathLike[str] | None, pool: Any, targets: Any,
           top_n: int) -> tuple[SelectionInputs, dict[str, Path]]:
    """Check ``top_n``, read the inputs and write the report; the inputs and the paths written."""
    top_n = _check_top_n(top_n)
    inputs = load_inputs(selection, pool, targets)
    out_dir = Path(output) if output is not None else inputs.selection.path / "report"
    return inputs, write_report(inputs, out_dir, top_n)


def write_report(inputs: SelectionInputs, out_dir: Path, top_n: int) -> dict[str, Path]:
    """Write the page and its plots for inputs already read.

    ``index.html`` of an earlier report is removed first and the new one written last
    (through a temporary file), so a failed run never leaves a page that looks complete
    beside plots it does not show; earlier plots this report does not draw are removed.

    Args:
        inputs: the selection and its records.
        out_dir: the report directory (created).
        top_n: pool (and target) examples shown per target subtask.

    Returns:
        ``{"index": index.html, <plot name>: png path, ...}`` for the files written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    index = out_dir / "index.html"
    index.unlink(missing_ok=True)
    sel = inputs.selection
    nums = summary_numbers(sel, inputs.pool)
    comp = composition(sel)
    plots: dict[str, bytes | None] = {
        "scores": plot_scores(sel),
        "composition": plot_composition(comp),
        "subtasks": plot_subtasks(sel),
        "lengths": plot_lengths(inputs.pool, sel.table["selected"]) if inputs.pool is not None else None,
    }
    written: dict[str, Path] = {}
    for name, data in plots.items():
        path = out_dir / PLOT_FILES[name]
        if data is None:
            path.unlink(missing_ok=True)  # never leave a plot of an earlier report beside this one
            continue
        path.write_bytes(data)
        log.info("wrote %s", path)
        written[name] = path
    tmp = index.with_name(f".{index.name}.tmp")
    tmp.write_text(render_html(nums, comp, plots, inputs, top_n), encoding="utf-8")
    os.replace(tmp, index)
    log.info("wrote %s", index)
    return {"index": index, **written}


def build_report(
    selection: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    pool: Any = None,
    targets: Any = None,
    top_n: int = 5,
) -> dict[str, Path]:
    """Write the HTML report of a selection directory.

    Args:
        selection: the selection directory.
        output: the report directory (default ``<selection>/report``).
        pool: pool jsonl file(s); default: the pool files recorded in the manifest.
        targets: target jsonl file(s); default: ``inputs.targets`` of the manifest, if any.
        top_n: pool examples (and target examples) shown per target subtask.

    Returns:
        ``{"index": index.html, <plot name>: png path, ...}`` for the files written.

    Raises:
        InputError: ``top_n`` is not a positive integer.
        StaleSelectionError: explicit ``pool`` files that do not match the selection.
    """
    return _build(selection, output, pool, targets, top_n)[1]


def report(
    *,
    selection: str,
    output: str | None = None,
    pool: list[str] | str | None = None,
    targets: list[str] | str | None = None,
    top_n: int = 5,
) -> dict[str, Any]:
    """Write an offline HTML report (index.html + PNG plots) of a selection directory.

    Args:
        selection: the selection directory (scores.csv, selected.jsonl, manifest.json).
        output: the report directory (default: <selection>/report).
        pool: pool jsonl file(s) (``--pool a.jsonl`` or ``--pool '[a.jsonl,b.jsonl]'``);
            default: the pool files recorded in the manifest.
        targets: target jsonl file(s); default: the manifest's ``inputs.targets``, if any.
        top_n: top pool examples (and target examples) shown per target subtask.

    Returns:
        What was written, as JSON-able values: ``selection`` and ``index`` (paths),
        ``plots`` (plot name to PNG path, for the plots drawn) and ``warnings`` (recorded
        input files that were skipped or have changed).
    """
    inputs, paths = _build(selection, output, pool, targets, top_n)
    return {
        "selection": str(inputs.selection.path),
        "index": str(paths.pop("index")),
        "plots": {name: str(path) for name, path in paths.items()},
        "warnings": list(inputs.warnings),
    }
