"""The report's figures, each rendered to PNG bytes, and the figure helpers other plots share.

Figures are bare :class:`matplotlib.figure.Figure` objects on an Agg canvas: no pyplot
state and no backend switch, so plotting works headless and inside other programs.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lightning_less.analysis.formatting import ellipsize
from lightning_less.analysis.stats import SCORE_PREFIX, has_scores, record_lengths, subtask_columns
from lightning_less.data.records import Record
from lightning_less.selection.outputs import Selection

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PLOT_FILES = {
    "scores": "score_distribution.png",
    "composition": "composition.png",
    "subtasks": "subtask_scores.png",
    "lengths": "lengths.png",
}
"""The report's plots by name, and the PNG file each is written to."""

POOL_COLOUR = "#b0b7c3"
SELECTED_COLOUR = "#2f6fdf"


# --------------------------------------------------------------------------- shared helpers


def new_figure(width: float, height: float, **margins: float) -> Figure:
    """A ``width`` x ``height`` inch figure at 100 dpi on an Agg canvas.

    Args:
        width: inches.
        height: inches.
        **margins: :meth:`Figure.subplots_adjust` arguments over the defaults
            (``left=0.09, right=0.98, bottom=0.14, top=0.9``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    # Fixed margins instead of a layout engine, which would draw every figure twice.
    fig.subplots_adjust(**{"left": 0.09, "right": 0.98, "bottom": 0.14, "top": 0.9, **margins})
    return fig


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes, without the matplotlib version in the metadata (same inputs, same bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def category_ticks(ax: Axes, labels: Sequence[str], rotate: bool) -> None:
    """One x tick per category at ``0 .. n-1``; ``rotate`` slants them so long names do not overlap."""
    ax.set_xticks(np.arange(len(labels)), list(labels), rotation=30 if rotate else 0,
                  ha="right" if rotate else "center")


def _axes(width: float, height: float, *, title: str, xlabel: str, ylabel: str,
          **margins: float) -> tuple[Figure, Axes]:
    """A figure with one titled, labelled axes."""
    fig = new_figure(width, height, **margins)
    ax = fig.add_subplot()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return fig, ax


def _bins(values: np.ndarray, n: int = 40) -> np.ndarray:
    """``n`` equal bins over the values' range (one unit wide around a constant)."""
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, n + 1)


def _pool_and_selected(ax: Axes, pool: np.ndarray, selected: np.ndarray, bins: np.ndarray, labels: tuple[str, str],
                       alpha: float = 0.85, density: bool = False) -> None:
    """The pool's histogram with the selected examples' over it (left out when none are selected)."""
    ax.hist(pool, bins=bins, density=density, color=POOL_COLOUR, label=labels[0])
    if selected.size:
        ax.hist(selected, bins=bins, density=density, color=SELECTED_COLOUR, alpha=alpha, label=labels[1])


# --------------------------------------------------------------------------- the report's plots


def plot_scores(sel: Selection) -> bytes | None:
    """(a) The pool's score histogram, the selected examples' over it and the lowest selected score marked.

    Returns:
        PNG bytes, or ``None`` for a method without scores.
    """
    scores, chosen = sel.table["score"], sel.table["selected"]
    finite = np.isfinite(scores)
    if not finite.any():
        return None
    fig, ax = _axes(8, 4, title=f"Score distribution ({sel.manifest.get('method')})", xlabel="score",
                    ylabel="pool examples")
    sel_finite = finite & chosen
    labels = (f"pool (n={int(finite.sum())})", f"selected (k={int(chosen.sum())})")
    _pool_and_selected(ax, scores[finite], scores[sel_finite], _bins(scores[finite]), labels)
    if sel_finite.any():
        cut = float(scores[sel_finite].min())
        ax.axvline(cut, color="#d62728", linestyle="--", linewidth=1.5, label=f"cut-off (lowest selected) = {cut:.4g}")
    ax.legend(loc="best", fontsize=8)
    return png_bytes(fig)


def plot_composition(rows: list[dict[str, Any]]) -> bytes:
    """(b) Pool and selected share per source (from :func:`~lightning_less.analysis.stats.composition`).

    The bars are labelled with the counts.
    """
    rotate = len(rows) > 4
    fig, ax = _axes(max(6.0, 0.9 * len(rows) + 3), 4.5, title="Composition by source (bar labels: counts)", xlabel="",
                    ylabel="share", bottom=0.3 if rotate else 0.12)
    x = np.arange(len(rows))
    width = 0.4
    pool = [r["pool_share"] for r in rows]
    chosen = [r["selected_share"] for r in rows]
    b1 = ax.bar(x - width / 2, pool, width, color=POOL_COLOUR, label="pool")
    b2 = ax.bar(x + width / 2, chosen, width, color=SELECTED_COLOUR, label="selected")
    ax.bar_label(b1, labels=[str(r["pool_count"]) for r in rows], fontsize=7, padding=1)
    ax.bar_label(b2, labels=[str(r["selected_count"]) for r in rows], fontsize=7, padding=1)
    category_ticks(ax, [ellipsize(r["source"], 22) for r in rows], rotate)
    ax.set_ylim(0, max([*pool, *chosen, 0.01]) * 1.35)  # headroom for the legend
    ax.legend(fontsize=8)
    return png_bytes(fig)


def plot_subtasks(sel: Selection) -> bytes | None:
    """(c) One score histogram per scored ``score/<subtask>`` column, three to a row.

    Returns:
        PNG bytes, or ``None`` without per-subtask scores.
    """
    table = sel.table
    names = [s for s in subtask_columns(table) if has_scores(table[f"{SCORE_PREFIX}{s}"])]
    if not names:
        return None
    chosen = table["selected"]
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    height = 3.2 * nrows + 0.4
    # Half an inch of title and axis label whatever the number of rows.
    fig = new_figure(4.2 * ncols, height, left=0.08, bottom=0.5 / height + 0.08, top=1 - 0.5 / height - 0.06,
                     wspace=0.3, hspace=0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, name in enumerate(names):
        ax = axes[i // ncols][i % ncols]
        values = table[f"{SCORE_PREFIX}{name}"]
        finite = np.isfinite(values)
        _pool_and_selected(ax, values[finite], values[finite & chosen], _bins(values[finite], 30), ("pool", "selected"))
        ax.set_title(ellipsize(name, 40), fontsize=10)
        ax.set_xlabel(ellipsize(f"{SCORE_PREFIX}{name}", 40), fontsize=8)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7)
    for j in range(len(names), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    fig.suptitle("Per-subtask score distributions")
    return png_bytes(fig)


def plot_lengths(pool: Sequence[Record], chosen: np.ndarray) -> bytes:
    """(d) Length densities (whitespace tokens) of the pool and of the selected examples.

    Args:
        pool: the pool records in pool-index order.
        chosen: ``[n]`` bool, the selected rows.
    """
    lengths = record_lengths(pool)
    fig, ax = _axes(8, 4, title="Length distribution", xlabel="length (whitespace tokens of the record text)",
                    ylabel="density")
    selected_label = f"selected (mean {lengths[chosen].mean():.1f})" if chosen.any() else ""
    _pool_and_selected(ax, lengths, lengths[chosen], _bins(lengths, 40),
                       (f"pool (mean {lengths.mean():.1f})", selected_label), alpha=0.6, density=True)
    ax.legend(fontsize=8)
    return png_bytes(fig)
