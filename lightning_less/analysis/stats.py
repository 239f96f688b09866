"""The numbers of a selection: summary statistics, composition by source, rankings and lengths.

Everything here is computed from ``scores.csv`` (as :class:`Selection.table`) and the
manifest, so that a page or a table built from it agrees with the file a user can open.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lightning_less.data.records import Record
from lightning_less.selection.outputs import Selection

SCORE_PREFIX = "score/"
"""The prefix of the per-subtask score columns of ``scores.csv``."""


def subtask_label(record: Record) -> str:
    """A target's subtask, falling back to its source (as the selectors group targets)."""
    return record.subtask if record.subtask is not None else record.source


def subtask_columns(table: dict[str, Any]) -> list[str]:
    """The subtask names of the ``score/<subtask>`` columns, in column order."""
    return [name[len(SCORE_PREFIX) :] for name in table if name.startswith(SCORE_PREFIX)]


def has_scores(values: np.ndarray) -> bool:
    """Whether a score column holds any number (methods without scores write empty cells, read as NaN)."""
    return bool(np.any(np.isfinite(values)))


def ranking(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Row positions by descending value, ties by ascending pool index; non-finite values dropped.

    Args:
        values: ``[n]`` scores (NaN where a row has none).
        index: ``[n]`` pool indices of the rows (the tie-break).

    Returns:
        ``[m]`` row positions, ``m`` the number of finite values.
    """
    finite = np.nonzero(np.isfinite(values))[0]
    order = np.lexsort((index[finite], -values[finite]))
    return finite[order]


def ranking_column(table: dict[str, Any], subtask: str) -> str | None:
    """The column that ranks the pool for ``subtask``: its own if scored, else ``score`` if scored, else ``None``."""
    own = f"{SCORE_PREFIX}{subtask}"
    if own in table and has_scores(table[own]):
        return own
    return "score" if has_scores(table["score"]) else None


def record_lengths(records: Sequence[Record]) -> np.ndarray:
    """``[n]`` float64: whitespace tokens of each record's text (all turns), a tokenizer-free length."""
    return np.asarray([len(r.text.split()) for r in records], dtype=np.float64)


def score_stats(values: np.ndarray) -> dict[str, float | None]:
    """Mean, min and max of the finite values (all ``None`` when there are none)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"mean": None, "min": None, "max": None}
    return {"mean": float(finite.mean()), "min": float(finite.min()), "max": float(finite.max())}


def summary_numbers(sel: Selection, pool: Sequence[Record] | None = None) -> dict[str, Any]:
    """The report's key numbers, computed from ``scores.csv`` (method/budget/seed from the manifest).

    Args:
        sel: the selection.
        pool: its pool records, for the mean lengths (left out when ``None``).

    Returns:
        ``method``, ``budget_fraction``, ``budget_count``, ``budget_k``, ``k`` (selected
        rows of ``scores.csv``), ``n_pool``, ``seed``, ``score_{mean,min,max}_{selected,pool}``
        and, with ``pool``, ``length_mean_pool`` and ``length_mean_selected``.
    """
    table, manifest = sel.table, sel.manifest
    chosen = table["selected"]
    scores = table["score"]
    budget = manifest.get("budget") or {}
    out: dict[str, Any] = {
        "method": manifest.get("method"),
        "budget_fraction": budget.get("fraction"),
        "budget_count": budget.get("count"),
        "budget_k": budget.get("k"),
        "k": int(chosen.sum()),
        "n_pool": len(table["index"]),
        "seed": manifest.get("seed"),
    }
    for part, values in (("selected", scores[chosen]), ("pool", scores)):
        for stat, value in score_stats(values).items():
            out[f"score_{stat}_{part}"] = value
    if pool is not None:
        lengths = record_lengths(pool)
        out["length_mean_pool"] = float(lengths.mean())
        out["length_mean_selected"] = float(lengths[chosen].mean()) if chosen.any() else None
    return out


def composition(sel: Selection) -> list[dict[str, Any]]:
    """Per source (in order of first appearance in the pool): pool and selected counts and shares."""
    sources = sel.table["source"]
    chosen = sel.table["selected"]
    n, k = len(sources), int(chosen.sum())
    counts: dict[str, list[int]] = {}
    for source, is_sel in zip(sources, chosen):
        c = counts.setdefault(source, [0, 0])
        c[0] += 1
        c[1] += int(is_sel)
    return [
        {
            "source": s,
            "pool_count": c[0],
            "selected_count": c[1],
            "pool_share": c[0] / n if n else 0.0,
            "selected_share": c[1] / k if k else 0.0,
        }
        for s, c in counts.items()
    ]
