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
budget and seed). Key numbers sit in elements with a ``data-key`` attribute, and
their exact value (``repr`` of the float, or the integer) in ``data-value``, so that
tools and tests can read them back; sources and subtasks are named by ``data-source``
and ``data-subtask``. Methods without scores (random, S2L) still get a report:
composition and lengths, with "no scores for this method" in place of score plots.

Pool records (for texts and lengths) are read from ``pool`` files or, when not given,
from the pool files recorded in the manifest; targets from ``targets`` files or the
manifest's ``inputs.targets``. Recorded files that are missing or changed are skipped
with a warning (their sections say why); files given explicitly must match.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lightning_less.console import setup_logging
from lightning_less.data.records import Record, RecordError, as_paths, file_sha256, read_records
from lightning_less.selection.outputs import Selection, StaleSelectionError, read_selection

log = logging.getLogger(__name__)

PLOT_FILES = {
    "scores": "score_distribution.png",
    "composition": "composition.png",
    "subtasks": "subtask_scores.png",
    "lengths": "lengths.png",
}
NO_SCORES = "no scores for this method"
MAX_TEXT_CHARS = 1500


# --------------------------------------------------------------------------- helpers


def subtask_label(record: Record) -> str:
    """A target's subtask, falling back to its source (as the selectors group targets)."""
    return record.subtask if record.subtask is not None else record.source


def subtask_columns(table: dict[str, Any]) -> list[str]:
    """The subtask names of the ``score/<subtask>`` columns, in column order."""
    return [name[len("score/") :] for name in table if name.startswith("score/")]


def has_scores(values: np.ndarray) -> bool:
    return bool(np.any(np.isfinite(values)))


def ranking(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Row positions by descending value, ties by ascending pool index; non-finite values dropped."""
    finite = np.nonzero(np.isfinite(values))[0]
    order = np.lexsort((index[finite], -values[finite]))
    return finite[order]


def record_length(record: Record) -> int:
    """Whitespace tokens of the record's text (all turns)."""
    return len(record.text.split())


def _stats(values: np.ndarray) -> dict[str, float | None]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"mean": None, "min": None, "max": None}
    return {"mean": float(finite.mean()), "min": float(finite.min()), "max": float(finite.max())}


def _fmt_num(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "—"
        return f"{float(value):.4g}"
    return str(value)


def _raw(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else repr(float(value))
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return str(value)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _shorten(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f" … [{len(text) - limit} more characters]"


# --------------------------------------------------------------------------- inputs


@dataclass
class ReportInputs:
    """Everything the report is built from."""

    selection: Selection
    pool: list[Record] | None = None
    pool_note: str = ""
    targets: list[Record] | None = None
    targets_note: str = ""
    warnings: list[str] = field(default_factory=list)


def load_pool(sel: Selection, pool: Any, warnings: list[str]) -> tuple[Selection, list[Record] | None, str]:
    """The pool records of a selection (explicit files must match; recorded ones are skipped on a mismatch).

    Returns the selection (read again, checked against the records, when they are used),
    the records or ``None``, and a note saying where they came from or why they are missing.
    """
    explicit = as_paths(pool)
    if explicit:
        log.info("reading pool records from %s", ", ".join(explicit))
        records = read_records(explicit)
        checked = read_selection(sel.path, records)  # raises StaleSelectionError on a mismatch
        return checked, records, f"pool records read from {', '.join(explicit)}"
    recorded = as_paths(sel.manifest.get("inputs", {}).get("pool"))
    if not recorded:
        note = "the manifest records no pool files and none were given (--pool)"
        warnings.append(note)
        return sel, None, note
    missing = [p for p in recorded if not os.path.isfile(p)]
    if missing:
        note = f"pool file(s) recorded in the manifest not found: {', '.join(missing)} (pass --pool)"
        log.warning(note)
        warnings.append(note)
        return sel, None, note
    log.info("reading pool records from the manifest's pool files: %s", ", ".join(recorded))
    try:
        records = read_records(recorded)
        checked = read_selection(sel.path, records)
    except (StaleSelectionError, RecordError) as err:
        note = f"pool records not used: {err}"
        log.warning(note)
        warnings.append(note)
        return sel, None, note
    return checked, records, f"pool records read from {', '.join(recorded)}"


def load_targets(manifest: dict, targets: Any, warnings: list[str]) -> tuple[list[Record] | None, str]:
    """Read target records from explicit files, else from the manifest's ``inputs.targets``."""
    explicit = as_paths(targets)
    if explicit:
        log.info("reading target records from %s", ", ".join(explicit))
        return read_records(explicit), f"targets read from {', '.join(explicit)}"
    recorded = as_paths(manifest.get("inputs", {}).get("targets"))
    if not recorded:
        return None, "no target files given (--targets) or recorded in the manifest"
    missing = [p for p in recorded if not os.path.isfile(p)]
    if missing:
        note = f"target file(s) recorded in the manifest not found: {', '.join(missing)} (pass --targets)"
        log.warning(note)
        warnings.append(note)
        return None, note
    log.info("reading target records from the manifest's target files: %s", ", ".join(recorded))
    entries = manifest["inputs"]["targets"]
    for entry in entries if isinstance(entries, list) else [entries]:
        if isinstance(entry, dict) and entry.get("sha256") and file_sha256(entry["path"]) != entry["sha256"]:
            note = f"target file {entry['path']} changed since the selection was written (sha256 differs)"
            log.warning(note)
            warnings.append(note)
    try:
        return read_records(recorded), f"targets read from {', '.join(recorded)}"
    except RecordError as err:
        note = f"target records not used: {err}"
        log.warning(note)
        warnings.append(note)
        return None, note


def load_inputs(selection: str | os.PathLike, pool: Any = None, targets: Any = None) -> ReportInputs:
    """Read a selection directory and, where available, its pool and target records."""
    selection_dir = Path(selection)
    log.info("reading selection %s", selection_dir)
    warnings: list[str] = []
    sel, pool_records, pool_note = load_pool(read_selection(selection_dir), pool, warnings)
    target_records, targets_note = load_targets(sel.manifest, targets, warnings)
    return ReportInputs(sel, pool_records, pool_note, target_records, targets_note, warnings)


# --------------------------------------------------------------------------- numbers


def summary_numbers(sel: Selection, pool: Sequence[Record] | None = None) -> dict[str, Any]:
    """The report's key numbers, computed from ``scores.csv`` (method/budget/seed from the manifest)."""
    table, manifest = sel.table, sel.manifest
    chosen = table["selected"]
    scores = table["score"]
    budget = manifest.get("budget") or {}
    pool_stats = _stats(scores)
    sel_stats = _stats(scores[chosen])
    out: dict[str, Any] = {
        "method": manifest.get("method"),
        "budget_fraction": budget.get("fraction"),
        "budget_count": budget.get("count"),
        "budget_k": budget.get("k"),
        "k": int(chosen.sum()),
        "n_pool": int(len(table["index"])),
        "seed": manifest.get("seed"),
        "score_mean_selected": sel_stats["mean"],
        "score_min_selected": sel_stats["min"],
        "score_max_selected": sel_stats["max"],
        "score_mean_pool": pool_stats["mean"],
        "score_min_pool": pool_stats["min"],
        "score_max_pool": pool_stats["max"],
    }
    if pool is not None:
        lengths = np.asarray([record_length(r) for r in pool], dtype=np.float64)
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


# --------------------------------------------------------------------------- plots


def _new_figure(width: float, height: float, **margins: float):
    # Agg canvas on a bare Figure: no pyplot state, no backend switch. Fixed margins
    # instead of a layout engine, which would draw every figure twice.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(**{"left": 0.09, "right": 0.98, "bottom": 0.14, "top": 0.9, **margins})
    return fig


def _label(text: str, limit: int = 22) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _bins(values: np.ndarray, n: int = 40) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, n + 1)


def plot_scores(sel: Selection) -> bytes | None:
    table = sel.table
    scores, chosen = table["score"], table["selected"]
    finite = np.isfinite(scores)
    if not finite.any():
        return None
    fig = _new_figure(8, 4)
    ax = fig.add_subplot()
    bins = _bins(scores[finite])
    ax.hist(scores[finite], bins=bins, color="#b0b7c3", label=f"pool (n={int(finite.sum())})")
    sel_finite = finite & chosen
    if sel_finite.any():
        ax.hist(scores[sel_finite], bins=bins, color="#2f6fdf", alpha=0.85, label=f"selected (k={int(chosen.sum())})")
        cut = float(scores[sel_finite].min())
        ax.axvline(cut, color="#d62728", linestyle="--", linewidth=1.5, label=f"cut-off (lowest selected) = {cut:.4g}")
    ax.set_xlabel("score")
    ax.set_ylabel("pool examples")
    ax.set_title(f"Score distribution ({sel.manifest.get('method')})")
    ax.legend(loc="best", fontsize=8)
    return _png(fig)


def plot_composition(rows: list[dict[str, Any]]) -> bytes:
    rotate = len(rows) > 4
    fig = _new_figure(max(6.0, 0.9 * len(rows) + 3), 4.5, bottom=0.3 if rotate else 0.12)
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    width = 0.4
    pool = [r["pool_share"] for r in rows]
    chosen = [r["selected_share"] for r in rows]
    b1 = ax.bar(x - width / 2, pool, width, color="#b0b7c3", label="pool")
    b2 = ax.bar(x + width / 2, chosen, width, color="#2f6fdf", label="selected")
    ax.bar_label(b1, labels=[str(r["pool_count"]) for r in rows], fontsize=7, padding=1)
    ax.bar_label(b2, labels=[str(r["selected_count"]) for r in rows], fontsize=7, padding=1)
    ax.set_xticks(x, [_label(r["source"]) for r in rows], rotation=30 if rotate else 0, ha="right" if rotate else "center")
    ax.set_ylabel("share")
    ax.set_ylim(0, max([*pool, *chosen, 0.01]) * 1.35)  # headroom for the legend
    ax.set_title("Composition by source (bar labels: counts)")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_subtasks(sel: Selection) -> bytes | None:
    table = sel.table
    names = [s for s in subtask_columns(table) if has_scores(table[f"score/{s}"])]
    if not names:
        return None
    chosen = table["selected"]
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = _new_figure(4.2 * ncols, 3.2 * nrows + 0.4, left=0.08, bottom=0.5 / (3.2 * nrows + 0.4) + 0.08,
                      top=1 - 0.5 / (3.2 * nrows + 0.4) - 0.06, wspace=0.3, hspace=0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, name in enumerate(names):
        ax = axes[i // ncols][i % ncols]
        values = table[f"score/{name}"]
        finite = np.isfinite(values)
        bins = _bins(values[finite], 30)
        ax.hist(values[finite], bins=bins, color="#b0b7c3", label="pool")
        if (finite & chosen).any():
            ax.hist(values[finite & chosen], bins=bins, color="#2f6fdf", alpha=0.85, label="selected")
        ax.set_title(_label(name, 40), fontsize=10)
        ax.set_xlabel(_label(f"score/{name}", 40), fontsize=8)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7)
    for j in range(len(names), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    fig.suptitle("Per-subtask score distributions")
    return _png(fig)


def plot_lengths(pool: Sequence[Record], chosen: np.ndarray) -> bytes:
    lengths = np.asarray([record_length(r) for r in pool], dtype=np.float64)
    fig = _new_figure(8, 4)
    ax = fig.add_subplot()
    bins = _bins(lengths, 40)
    ax.hist(lengths, bins=bins, density=True, color="#b0b7c3", label=f"pool (mean {lengths.mean():.1f})")
    if chosen.any():
        ax.hist(
            lengths[chosen], bins=bins, density=True, color="#2f6fdf", alpha=0.6,
            label=f"selected (mean {lengths[chosen].mean():.1f})",
        )
    ax.set_xlabel("length (whitespace tokens of the record text)")
    ax.set_ylabel("density")
    ax.set_title("Length distribution")
    ax.legend(fontsize=8)
    return _png(fig)


# --------------------------------------------------------------------------- HTML

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px auto; max-width: 1150px;
       color: #1d2330; background: #fff; line-height: 1.4; padding: 0 16px; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #dde2ea; padding-bottom: 4px; margin-top: 1.6em; }
h3 { margin-bottom: 0.3em; }
.meta { color: #5b6475; font-size: 0.9em; }
table { border-collapse: collapse; margin: 8px 0; font-size: 0.9em; }
th, td { border: 1px solid #dde2ea; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f5f9; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img.plot { max-width: 100%; border: 1px solid #eef0f4; }
.note { background: #f6f7fb; border-left: 4px solid #b0b7c3; padding: 6px 10px; color: #3b4455; }
.warning { background: #fff6e5; border-left: 4px solid #e0a020; padding: 6px 10px; }
table.examples { width: 100%; table-layout: fixed; }
table.examples td .text { white-space: pre-wrap; word-break: break-word; font-family: ui-monospace, Menlo, Consolas, monospace;
       font-size: 0.85em; max-height: 14em; overflow: auto; }
.tag { display: inline-block; font-size: 0.75em; padding: 0 5px; border-radius: 3px; background: #e3ecfb; color: #2f4f8f; }
.tag.sel { background: #dff3e4; color: #1f6b36; }
"""


def _cell(key: str, value: Any, num: bool = True, **attrs: str) -> str:
    extra = "".join(f' data-{k}="{_esc(v)}"' for k, v in attrs.items())
    cls = ' class="num"' if num else ""
    return f'<td{cls} data-key="{_esc(key)}" data-value="{_esc(_raw(value))}"{extra}>{_esc(_fmt_num(value))}</td>'


def _img(name: str, data: bytes, alt: str) -> str:
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<img class="plot" id="plot-{_esc(name)}" src="{uri}" alt="{_esc(alt)}" data-file="{_esc(PLOT_FILES[name])}">'


def _summary_html(nums: dict[str, Any]) -> str:
    budget = []
    if nums["budget_fraction"] is not None:
        budget.append(f"fraction {nums['budget_fraction']}")
    if nums["budget_count"] is not None:
        budget.append(f"count {nums['budget_count']}")
    rows = [
        f'<tr><th>method</th><td data-key="method" data-value="{_esc(_raw(nums["method"]))}" colspan="2">{_esc(nums["method"])}</td></tr>',
        f'<tr><th>budget</th><td colspan="2" data-key="budget" data-value="{_esc(", ".join(budget))}">'
        f'{_esc(", ".join(budget) or "—")}</td></tr>',
        f'<tr><th>budget k (manifest)</th>{_cell("budget_k", nums["budget_k"])}<td></td></tr>',
        f'<tr><th>k (selected, scores.csv)</th>{_cell("k", nums["k"])}<td></td></tr>',
        f'<tr><th>n_pool</th>{_cell("n_pool", nums["n_pool"])}<td></td></tr>',
        f'<tr><th>seed</th>{_cell("seed", nums["seed"])}<td></td></tr>',
        '<tr><th></th><th>selected</th><th>pool</th></tr>',
    ]
    for stat in ("mean", "min", "max"):
        rows.append(
            f"<tr><th>{stat} score</th>{_cell(f'score_{stat}_selected', nums[f'score_{stat}_selected'])}"
            f"{_cell(f'score_{stat}_pool', nums[f'score_{stat}_pool'])}</tr>"
        )
    if "length_mean_pool" in nums:
        rows.append(
            f"<tr><th>mean length (tokens)</th>{_cell('length_mean_selected', nums['length_mean_selected'])}"
            f"{_cell('length_mean_pool', nums['length_mean_pool'])}</tr>"
        )
    return '<table id="summary">' + "".join(rows) + "</table>"


def _composition_html(rows: list[dict[str, Any]]) -> str:
    head = "<tr><th>source</th><th>pool</th><th>pool share</th><th>selected</th><th>selected share</th></tr>"
    body = []
    for r in rows:
        s = r["source"]
        body.append(
            f'<tr data-source="{_esc(s)}"><td>{_esc(s)}</td>'
            f'{_cell("pool_count", r["pool_count"], source=s)}'
            f'<td class="num" data-key="pool_share" data-source="{_esc(s)}" data-value="{_raw(r["pool_share"])}">{r["pool_share"]:.1%}</td>'
            f'{_cell("selected_count", r["selected_count"], source=s)}'
            f'<td class="num" data-key="selected_share" data-source="{_esc(s)}" data-value="{_raw(r["selected_share"])}">{r["selected_share"]:.1%}</td></tr>'
        )
    return '<table id="composition">' + head + "".join(body) + "</table>"


def _text_block(record: Record | None) -> str:
    if record is None:
        return '<div class="text note">(pool records unavailable)</div>'
    return f'<div class="text">{_esc(_shorten(record.text))}</div>'


def _examples_html(
    sel: Selection, pool: Sequence[Record] | None, targets: Sequence[Record] | None, top_n: int
) -> tuple[str, list[str]]:
    table = sel.table
    columns = subtask_columns(table)
    target_groups: dict[str, list[Record]] = {}
    for r in targets or []:
        target_groups.setdefault(subtask_label(r), []).append(r)
    names = list(dict.fromkeys([*target_groups, *columns]))
    if not names:
        return '<p class="note">no target subtasks: no targets given or recorded, and no per-subtask score columns.</p>', []
    parts = []
    for name in names:
        if f"score/{name}" in table and has_scores(table[f"score/{name}"]):
            column = f"score/{name}"
        elif has_scores(table["score"]):
            column = "score"
        else:
            column = None
        group = target_groups.get(name, [])
        parts.append(f'<section class="subtask" data-subtask="{_esc(name)}"><h3>{_esc(name)}</h3>')
        if column is None:
            order = np.zeros(0, dtype=np.int64)
            parts.append(f'<p class="note">{NO_SCORES}: no pool ranking to show.</p>')
        else:
            order = ranking(table[column], table["index"])[:top_n]
            parts.append(f'<p class="meta">top {len(order)} pool examples by <code>{_esc(column)}</code>'
                         f"{' (no per-subtask column for this subtask)' if column == 'score' and columns else ''}; "
                         f"{len(group)} target example(s) in this subtask.</p>")
        if not group:
            parts.append('<p class="note">no target examples for this subtask (none given or recorded).</p>')
        rows = max(len(order), min(top_n, len(group)))
        body = []
        for i in range(rows):
            if i < len(order):
                row = int(order[i])
                idx = int(table["index"][row])
                tag = (f' <span class="tag sel">selected #{int(table["rank"][row])}</span>' if table["selected"][row] else "")
                left = (
                    f'<td data-key="top_example" data-subtask="{_esc(name)}" data-rank="{i + 1}" data-index="{idx}" '
                    f'data-score="{_raw(table[column][row])}">'
                    f'<div class="meta">#{i + 1} · score {_fmt_num(float(table[column][row]))} · index {idx} · '
                    f'id {_esc(table["id"][row])} · <span class="tag">{_esc(table["source"][row])}</span>{tag}</div>'
                    f'{_text_block(pool[idx] if pool is not None else None)}</td>'
                )
            else:
                left = "<td></td>"
            if i < min(top_n, len(group)):
                t = group[i]
                right = (f'<td data-key="target_example" data-subtask="{_esc(name)}" data-id="{_esc(t.id)}">'
                         f'<div class="meta">target · id {_esc(t.id)}</div>{_text_block(t)}</td>')
            else:
                right = "<td></td>"
            body.append(f"<tr>{left}{right}</tr>")
        if body:
            parts.append(
                f'<table class="examples" data-subtask="{_esc(name)}"><tr><th>top pool examples</th>'
                f"<th>target examples</th></tr>{''.join(body)}</table>"
            )
        parts.append("</section>")
    return "".join(parts), names


def render_html(
    sel: Selection,
    nums: dict[str, Any],
    comp: list[dict[str, Any]],
    plots: dict[str, bytes | None],
    inputs: ReportInputs,
    top_n: int,
) -> str:
    method = nums["method"]
    title = f"Selection report: {method} — {sel.path}"
    notes = "".join(f'<p class="warning">{_esc(w)}</p>' for w in inputs.warnings)
    if nums["budget_k"] is not None and nums["budget_k"] != nums["k"]:
        notes += f'<p class="warning">the manifest budget k ({nums["budget_k"]}) differs from the number selected in scores.csv ({nums["k"]}).</p>'

    def plot_or_note(name: str, alt: str, missing: str) -> str:
        data = plots.get(name)
        return _img(name, data, alt) if data else f'<p class="note" id="plot-{name}-missing">{_esc(missing)}</p>'

    scored = has_scores(sel.table["score"])
    examples, _ = _examples_html(sel, inputs.pool, inputs.targets, top_n)
    body = f"""
<h1>Selection report: <span id="method">{_esc(method)}</span></h1>
<p class="meta">selection <code>{_esc(sel.path)}</code> · library {_esc(sel.manifest.get('library_version', '?'))} ·
{_esc(inputs.pool_note)} · {_esc(inputs.targets_note)}</p>
{notes}
<h2>Summary</h2>
{_summary_html(nums)}
<h2>(a) Score distribution</h2>
{plot_or_note("scores", "score distribution", NO_SCORES) if scored else f'<p class="note" id="plot-scores-missing">{NO_SCORES}.</p>'}
<h2>(b) Composition by source</h2>
{plot_or_note("composition", "composition by source", "")}
{_composition_html(comp)}
<h2>(c) Per-subtask score distributions</h2>
{plot_or_note("subtasks", "per-subtask scores", NO_SCORES + "." if not scored else "no per-subtask score columns in this selection.")}
<h2>(d) Length distribution</h2>
{plot_or_note("lengths", "length distribution", "pool records unavailable: " + inputs.pool_note)}
<h2>(e) Top pool examples per target subtask</h2>
{examples}
"""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>{body}</body></html>\n"
    )


# --------------------------------------------------------------------------- entry point


def build_report(
    selection: str | os.PathLike,
    output: str | os.PathLike | None = None,
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
    """
    if int(top_n) != top_n or top_n < 1:
        raise ValueError(f"top_n must be a positive integer, got {top_n!r}")
    inputs = load_inputs(selection, pool, targets)
    sel = inputs.selection
    out_dir = Path(output) if output is not None else sel.path / "report"
    out_dir.mkdir(parents=True, exist_ok=True)

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
    index = out_dir / "index.html"
    index.write_text(render_html(sel, nums, comp, plots, inputs, int(top_n)), encoding="utf-8")
    log.info("wrote %s", index)
    return {"index": index, **written}


def report_command(
    selection: str,
    output: str | None = None,
    pool: list[str] | str | None = None,
    targets: list[str] | str | None = None,
    top_n: int = 5,
) -> dict[str, Path]:
    """CLI body of ``lightning-less report``: logging, the report, and a final summary."""
    setup_logging()
    paths = build_report(selection, output, pool, targets, top_n)
    from rich.console import Console
    from rich.markup import escape

    console = Console()
    console.print(f"[bold]report of {escape(str(selection))} written:[/bold]")
    for name, path in paths.items():
        console.print(f"  {name}: {path}", markup=False, highlight=False)
    return paths
