"""The figure of a comparison of selection methods: target share, Jaccard overlap and, when trained, target loss."""

from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

import numpy as np


def _ticks(ax: Any, methods: Sequence[str]) -> None:
    rotate = len(methods) > 4
    ax.set_xticks(np.arange(len(methods)), methods, rotation=30 if rotate else 0, ha="right" if rotate else "center")


def _share_panel(ax: Any, result: Mapping[str, Any]) -> None:
    methods, rows, pool = result["methods"], result["rows"], result["pool"]
    x, form = np.arange(len(methods)), bool(result.get("target_form"))
    w = 0.38 if form else 0.6
    top = [pool["target_share"]]
    for key, color, offset, style in (("target_share", "#2f6fdf", -w / 2 if form else 0, "--"),
                                      ("form_share", "#f28e2b", w / 2, ":"))[: 2 if form else 1]:
        values = [rows[m][key] for m in methods]
        ax.bar_label(ax.bar(x + offset, values, w, color=color, label=key), fmt="%.2f", fontsize=7, padding=1)
        label = "pool share" if key == "target_share" else "pool form share"
        ax.axhline(pool[key], color=color, linestyle=style, linewidth=1.3, label=f"{label} = {pool[key]:.2f}")
        top += values + [pool[key]]
    _ticks(ax, methods)
    ax.set_ylim(0, min(1.0, max(top + [0.05])) * 1.45 + 0.02)  # headroom for the legend
    ax.set_yticks([t for t in ax.get_yticks() if 0 <= t <= 1 + 1e-9])  # no share ticks above 1
    ax.set_ylabel("share of the selection")
    ax.set_title("Target-source share per method", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", ncol=2)


def _jaccard_panel(fig: Any, ax: Any, result: Mapping[str, Any]) -> None:
    methods = result["methods"]
    mat = np.asarray(result["jaccard"]["matrix"], dtype=float)
    im = ax.imshow(mat, vmin=0.0, vmax=1.0, cmap="Blues")
    for i in range(len(methods)):
        for j in range(len(methods)):
            ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if mat[i, j] > 0.6 else "black")
    _ticks(ax, methods)
    ax.set_yticks(np.arange(len(methods)), methods)
    ax.set_title("Overlap of selections (Jaccard)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def _loss_panel(ax: Any, result: Mapping[str, Any]) -> None:
    methods = result["methods"]
    losses = [result["rows"][m].get("target_loss") for m in methods]
    x = np.arange(len(methods))
    bars = ax.bar(x, [np.nan if v is None else v for v in losses], 0.6, color="#59a14f")
    ax.bar_label(bars, labels=["" if v is None else f"{v:.3f}" for v in losses], fontsize=7, padding=1)
    for xi, v in zip(x, losses):
        if v is None:
            ax.text(xi, 0, "n/a", ha="center", va="bottom", fontsize=8, color="#666666")
    _ticks(ax, methods)
    ax.set_xlim(-0.6, len(methods) - 0.4)  # NaN bars do not widen the axis
    finite = [v for v in losses if v is not None]
    if finite:
        ax.set_ylim(0, max(finite) * 1.2)
    ax.set_ylabel("target loss (lower is better)")
    ax.set_title("Target loss after training on the selection", fontsize=10)


def plot_comparison(result: Mapping[str, Any]) -> bytes:
    """PNG: target share per method (pool share dashed), the Jaccard heatmap, and target loss when trained."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = result["methods"]
    trained = any(result["rows"][m].get("target_loss") is not None for m in methods)
    n_panels = 3 if trained else 2
    fig = Figure(figsize=(max(4.5, 0.7 * len(methods) + 2.5) * n_panels, 4.6), dpi=100)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.2 if len(methods) > 4 else 0.1, top=0.86, wspace=0.35)
    axes = fig.subplots(1, n_panels)
    _share_panel(axes[0], result)
    _jaccard_panel(fig, axes[1], result)
    if trained:
        _loss_panel(axes[2], result)
    fig.suptitle(f"{len(methods)} methods, k = {result['budget']['k']} of {result['n_pool']}", fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
