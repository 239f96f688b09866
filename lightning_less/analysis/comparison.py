"""Measures, tables and the figure of a comparison of selection methods (``lightning-less compare``).

Every selection is measured the same way, from the ``source`` of its examples:

* ``k``: the number of examples selected (``full`` always takes the whole pool);
* ``target_share``: the share of the selected examples whose ``source`` is one of the
  *target sources*, beside ``pool_share``, the same share over the whole pool (what a
  uniform sample gets on average). The target sources default to the target records'
  own ``source`` values (their ``dataset`` / ``source`` field, else the target file's
  name stem); pass ``target_sources`` when the targets are named differently from the
  pool sources of the target task;
* ``form_share`` (with ``target_form``, a regular expression searched in ``source``,
  e.g. ``_es$``): the share of the selection in the targets' surface form, whatever
  the task, beside ``pool_form_share``;
* ``group_shares`` (with ``group_by_regex``): the share of every group of sources, a
  group being the regex's first capture group (or whole match) in ``source``, and
  ``(other)`` where it does not match;
* ``composition``: the ``top_sources`` most frequent sources of the selection;
* the Jaccard overlap ``|A ∩ B| / |A ∪ B|`` of every two methods' selected index sets.

The result (:func:`lightning_less.recipes.compare.compare_methods`) is written as
``comparison.json``, :func:`comparison_csv`, :func:`comparison_markdown` and
:func:`plot_comparison`; :class:`Comparison` renders it as a rich table.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from lightning.pytorch.utilities import rank_zero_warn

from lightning_less.data.records import Record
from lightning_less.errors import InputError

OTHER_GROUP = "(other)"
SHORT = {"target_share": "target", "pool_share": "pool", "form_share": "form", "pool_form_share": "pool form",
         "target_loss": "loss", "target_exact_match": "exact"}


# --------------------------------------------------------------------------- measures


def share(flags: Sequence[bool] | np.ndarray) -> float:
    """The mean of boolean flags (0.0 for none)."""
    arr = np.asarray(flags, dtype=bool)
    return float(arr.mean()) if arr.size else 0.0


def jaccard(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> float:
    """``|A ∩ B| / |A ∪ B|`` of two index sets (1.0 for two empty sets)."""
    sa, sb = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    union = len(sa | sb)
    return 1.0 if union == 0 else len(sa & sb) / union


def jaccard_matrix(selected: Mapping[str, np.ndarray]) -> list[list[float]]:
    """The symmetric Jaccard matrix of the methods' selections, in the mapping's order."""
    names = list(selected)
    out = [[1.0] * len(names) for _ in names]
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            out[i][j] = out[j][i] = jaccard(selected[a], selected[names[j]])
    return out


def group_of(source: str, pattern: re.Pattern | None) -> str:
    """The group label of a source: the regex's first capture group (or whole match), else ``(other)``."""
    if pattern is None:
        return source
    m = pattern.search(source)
    if m is None:
        return OTHER_GROUP
    label = m.group(1) if pattern.groups else m.group(0)
    return OTHER_GROUP if label is None else label


def top_composition(sources: Sequence[str], n: int) -> list[dict[str, Any]]:
    """The ``n`` most frequent sources as ``{"source", "count", "share"}``, ties by name."""
    counts = sorted(Counter(sources).items(), key=lambda t: (-t[1], t[0]))
    return [{"source": s, "count": c, "share": c / len(sources)} for s, c in counts[:n]]


def measure(sources: Sequence[str], target_sources: set[str], form: re.Pattern | None,
            groups: re.Pattern | None, group_labels: Sequence[str], top_sources: int) -> dict[str, Any]:
    """The shares of one set of examples given their sources."""
    row: dict[str, Any] = {"k": len(sources), "n_target": int(sum(s in target_sources for s in sources)),
                           "target_share": share([s in target_sources for s in sources])}
    if form is not None:
        row["form_share"] = share([form.search(s) is not None for s in sources])
    if groups is not None:
        labels = [group_of(s, groups) for s in sources]
        row["group_shares"] = {g: share([x == g for x in labels]) for g in group_labels}
    row["composition"] = top_composition(sources, top_sources)
    return row


def _compile(pattern: str | None, flag: str) -> re.Pattern | None:
    try:
        return re.compile(pattern) if pattern else None
    except re.error as err:
        raise InputError(f"--{flag} {pattern!r} is not a regular expression: {err}") from None


@dataclass
class ShareSettings:
    """How a selection's shares are counted (checked when made, before any selection runs)."""

    target_sources: list[str] | None = None
    """Pool ``source`` values that count as the target task; default: the target records' own sources."""
    target_form: str | None = None
    """A regex searched in ``source`` for ``form_share`` (e.g. ``_es$``)."""
    group_by_regex: str | None = None
    """A regex whose first group (or match) in ``source`` names a group, for ``group_shares``."""
    top_sources: int = 5
    """How many of a selection's most frequent sources to list."""

    def __post_init__(self) -> None:
        self.form, self.groups = _compile(self.target_form, "target_form"), _compile(self.group_by_regex, "group_by_regex")
        if self.top_sources < 1:
            raise InputError(f"--top_sources must be >= 1, got {self.top_sources}")

    def resolve_targets(self, targets: Sequence[Record]) -> tuple[list[str], str]:
        """The target sources and where they come from (``"targets"`` or ``"given"``)."""
        if self.target_sources is not None:
            return sorted(set(self.target_sources)), "given"
        if not targets:
            raise InputError("give --targets or --target_sources (the pool sources of the target task)")
        return sorted({r.source for r in targets}), "targets"


def measure_selections(pool: Sequence[Record], targets: Sequence[Record], selected: Mapping[str, np.ndarray],
                       settings: ShareSettings) -> dict[str, Any]:
    """The measures of every selection: ``target_sources``, ``target_sources_from``, ``pool`` and ``rows``."""
    target_sources, sources_from = settings.resolve_targets(targets)
    tset, pool_sources = set(target_sources), [r.source for r in pool]
    if not tset & set(pool_sources):
        rank_zero_warn(f"none of the target sources {target_sources} occurs in the pool: every target_share is 0 "
                       "(pass target_sources to name the pool sources of the target task)")
    form, groups = settings.form, settings.groups
    labels = sorted({group_of(s, groups) for s in pool_sources}) if groups is not None else []
    pool_row = measure(pool_sources, tset, form, groups, labels, settings.top_sources)
    rows: dict[str, dict[str, Any]] = {}
    for method, indices in selected.items():
        row = {"method": method, **measure([pool_sources[i] for i in indices], tset, form, groups, labels, settings.top_sources)}
        row["pool_share"] = pool_row["target_share"]
        if form is not None:
            row["pool_form_share"] = pool_row["form_share"]
        rows[method] = row
    kept = ("target_share", "form_share", "group_shares", "composition")
    return {"target_sources": target_sources, "target_sources_from": sources_from,
            "pool": {key: pool_row[key] for key in kept if key in pool_row}, "rows": rows}


# --------------------------------------------------------------------------- tables


def _columns(result: Mapping[str, Any]) -> list[str]:
    """The scalar per-method columns present in ``result``."""
    cols = ["k", "target_share", "pool_share"]
    if result.get("target_form"):
        cols += ["form_share", "pool_form_share"]
    if any("target_loss" in r for r in result["rows"].values()):
        cols += ["target_loss", "target_exact_match"]
    return cols


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (bool, int, np.integer)):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def _top(row: Mapping[str, Any], n: int = 3) -> str:
    return ", ".join(f"{c['source']} {c['share']:.2f}" for c in row["composition"][:n])


def comparison_csv(result: Mapping[str, Any]) -> str:
    """One row per method: the scalar columns, group shares, Jaccard with every method, top sources."""
    methods = result["methods"]
    groups = list(result["pool"].get("group_shares", {}))
    header = ["method", *_columns(result), *(f"group/{g}" for g in groups), *(f"jaccard/{m}" for m in methods)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header + ["top_sources", "selection"])
    for i, method in enumerate(methods):
        row = result["rows"][method]
        values = [method] + ["" if row.get(k) is None else repr(row[k]) if isinstance(row[k], float) else row[k]
                             for k in _columns(result)]
        values += [repr(row["group_shares"][g]) for g in groups]
        values += [repr(v) for v in result["jaccard"]["matrix"][i]]
        values += [";".join(f"{c['source']}:{c['count']}" for c in row["composition"]), row["selection"]]
        writer.writerow(values)
    return buf.getvalue()


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], text_last: bool = False) -> list[str]:
    """A markdown table: the first column (and with ``text_last`` the last) left-aligned, numbers right-aligned."""
    align = "|---|" + "---:|" * (len(header) - 1 - text_last) + "---|" * text_last
    return ["| " + " | ".join(header) + " |", align] + ["| " + " | ".join(row) + " |" for row in rows]


def comparison_markdown(result: Mapping[str, Any]) -> str:
    """The comparison as markdown: a table per method, group shares, and the Jaccard matrix."""
    methods, budget, rows = result["methods"], result["budget"], result["rows"]
    how = f"fraction {budget['fraction']}" if budget.get("fraction") is not None else f"count {budget['count']}"
    whose = "the target records’ own sources" if result["target_sources_from"] == "targets" else "given"
    lines = [
        "# Selection methods compared", "",
        f"Pool: {result['n_pool']} examples; budget: {how} (k = {budget['k']}; `full` takes the whole pool); seed {result['seed']}.",
        "",
        f"`target_share`: share of the selection whose source is one of {', '.join(f'`{s}`' for s in result['target_sources'])} "
        f"({whose}); `pool_share`: the same share over the whole pool.",
    ]
    if result.get("target_form"):
        lines.append(f"`form_share`: share whose source matches `{_md(result['target_form'])}`.")
    cols = _columns(result)
    lines += [""] + _md_table(["method", *cols, "top sources"],
                              [[_md(m), *(_num(rows[m].get(k)) for k in cols), _md(_top(rows[m], 5))] for m in methods],
                              text_last=True)
    groups = list(result["pool"].get("group_shares", {}))
    if groups:
        table = [[_md(m), *(_num(rows[m]["group_shares"][g]) for g in groups)] for m in methods]
        table.append(["*pool*", *(_num(result["pool"]["group_shares"][g]) for g in groups)])
        lines += ["", f"## Group shares (`{_md(result['group_by_regex'])}`)", ""]
        lines += _md_table(["method", *(_md(g) for g in groups)], table)
    lines += ["", "## Overlap (Jaccard of the selected sets)", ""]
    lines += _md_table(["", *(_md(m) for m in methods)],
                       [[_md(m), *(_num(v, 2) for v in result["jaccard"]["matrix"][i])] for i, m in enumerate(methods)])
    return "\n".join(lines) + "\n"


def comparison_table(result: Mapping[str, Any], width: int | None = None) -> Any:
    """The comparison as a rich ``Table`` (short headers); the top-sources column only when ``width`` allows."""
    from rich.markup import escape
    from rich.table import Table

    cols = _columns(result)
    caption = "target / pool: share of the selection / of the pool from the target sources"
    if result.get("target_form"):
        caption += f"; form / pool form: share matching {escape(result['target_form'])}"
    if "target_loss" in cols:
        caption += "; loss / exact: target loss and exact match after training"
    table = Table(title=f"selection methods compared (k = {result['budget']['k']} of {result['n_pool']}; "
                        f"target sources: {escape(', '.join(result['target_sources']))})", caption=caption)
    table.add_column("method", no_wrap=True)
    for key in cols:
        table.add_column(SHORT.get(key, key), justify="right", no_wrap=True)
    wide = width is None or width >= 60 + 8 * len(cols)
    if wide:
        table.add_column("top sources", overflow="fold")
    for method in result["methods"]:
        row = result["rows"][method]
        table.add_row(method, *(_num(row.get(k)) for k in cols), *([escape(_top(row))] if wide else []))
    return table


class Comparison(dict):
    """The comparison result (the dict of ``comparison.json``, absolute file paths) that renders as a table.

    ``rich`` prints it as the comparison table, fitted to the console width, followed by
    the output files.
    """

    def __rich__(self) -> Any:
        return _ComparisonView(self)


class _ComparisonView:
    def __init__(self, result: Mapping[str, Any]) -> None:
        self.result = result

    def __rich_console__(self, console: Any, options: Any) -> Iterator[Any]:
        from rich.markup import escape

        yield comparison_table(self.result, options.max_width)
        for key, path in self.result["files"].items():
            yield f"{key}: {escape(str(path))}"


def print_comparison(result: Mapping[str, Any], console: Any = None) -> None:
    """Print the comparison table, then the output files."""
    from rich.console import Console

    (console or Console()).print(Comparison(result))


# --------------------------------------------------------------------------- figure


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
