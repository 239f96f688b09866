"""The report's HTML page: one self-contained document (inline CSS, plots as ``data:`` URIs).

Key numbers sit in elements with a ``data-key`` attribute and their exact value
(:func:`~lightning_less.analysis.formatting.exact_text`) in ``data-value``, so tools and
tests read back what the page shows; sources and subtasks are named by ``data-source``
and ``data-subtask``. Every text from a record, a file name or a manifest is escaped.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from typing import Any

import numpy as np

from lightning_less.analysis.formatting import exact_text, format_number, shorten
from lightning_less.analysis.inputs import SelectionInputs
from lightning_less.analysis.plots import PLOT_FILES
from lightning_less.analysis.stats import has_scores, ranking, ranking_column, subtask_columns, subtask_label
from lightning_less.data.records import Record
from lightning_less.selection.outputs import Selection

NO_SCORES = "no scores for this method"
MAX_TEXT_CHARS = 1500
"""Record texts longer than this are cut on the page (the rest is counted, not shown)."""

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


def esc(value: Any) -> str:
    """``str(value)`` escaped for HTML text and quoted attribute values."""
    return html.escape(str(value), quote=True)


def _cell(key: str, value: Any, num: bool = True, shown: str | None = None, **attrs: str) -> str:
    """A ``<td>`` showing ``value`` (or ``shown``) with its key and exact value in ``data-`` attributes."""
    extra = "".join(f' data-{k}="{esc(v)}"' for k, v in attrs.items())
    cls = ' class="num"' if num else ""
    text = format_number(value) if shown is None else shown
    return f'<td{cls} data-key="{esc(key)}" data-value="{esc(exact_text(value))}"{extra}>{esc(text)}</td>'


def _img(name: str, data: bytes, alt: str) -> str:
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<img class="plot" id="plot-{esc(name)}" src="{uri}" alt="{esc(alt)}" data-file="{esc(PLOT_FILES[name])}">'


def _summary_html(nums: dict[str, Any]) -> str:
    budget = []
    if nums["budget_fraction"] is not None:
        budget.append(f"fraction {nums['budget_fraction']}")
    if nums["budget_count"] is not None:
        budget.append(f"count {nums['budget_count']}")
    rows = [
        (f'<tr><th>method</th><td data-key="method" data-value="{esc(exact_text(nums["method"]))}" colspan="2">'
         f'{esc(nums["method"])}</td></tr>'),
        (f'<tr><th>budget</th><td colspan="2" data-key="budget" data-value="{esc(", ".join(budget))}">'
         f'{esc(", ".join(budget) or "—")}</td></tr>'),
        f'<tr><th>budget k (manifest)</th>{_cell("budget_k", nums["budget_k"])}<td></td></tr>',
        f'<tr><th>k (selected, scores.csv)</th>{_cell("k", nums["k"])}<td></td></tr>',
        f'<tr><th>n_pool</th>{_cell("n_pool", nums["n_pool"])}<td></td></tr>',
        f'<tr><th>seed</th>{_cell("seed", nums["seed"])}<td></td></tr>',
        '<tr><th></th><th>selected</th><th>pool</th></tr>',
    ]
    pairs = [(f"{stat} score", f"score_{stat}") for stat in ("mean", "min", "max")]
    if "length_mean_pool" in nums:
        pairs.append(("mean length (tokens)", "length_mean"))
    for label, key in pairs:
        rows.append(f"<tr><th>{label}</th>{_cell(f'{key}_selected', nums[f'{key}_selected'])}"
                    f"{_cell(f'{key}_pool', nums[f'{key}_pool'])}</tr>")
    return '<table id="summary">' + "".join(rows) + "</table>"


def _composition_html(rows: list[dict[str, Any]]) -> str:
    head = "<tr><th>source</th><th>pool</th><th>pool share</th><th>selected</th><th>selected share</th></tr>"
    body = []
    for r in rows:
        s = r["source"]
        cells = "".join(
            _cell(f"{part}_count", r[f"{part}_count"], source=s)
            + _cell(f"{part}_share", r[f"{part}_share"], shown=f"{r[f'{part}_share']:.1%}", source=s)
            for part in ("pool", "selected")
        )
        body.append(f'<tr data-source="{esc(s)}"><td>{esc(s)}</td>{cells}</tr>')
    return '<table id="composition">' + head + "".join(body) + "</table>"


def _text_block(record: Record | None) -> str:
    if record is None:
        return '<div class="text note">(pool records unavailable)</div>'
    return f'<div class="text">{esc(shorten(record.text, MAX_TEXT_CHARS))}</div>'


def _pool_example(sel: Selection, pool: Sequence[Record] | None, name: str, column: str, row: int, rank: int) -> str:
    """The cell of the ``rank``-th pool example of subtask ``name`` (``row`` of ``scores.csv``)."""
    table = sel.table
    idx = int(table["index"][row])
    tag = f' <span class="tag sel">selected #{int(table["rank"][row])}</span>' if table["selected"][row] else ""
    return (
        f'<td data-key="top_example" data-subtask="{esc(name)}" data-rank="{rank}" data-index="{idx}" '
        f'data-score="{exact_text(table[column][row])}">'
        f'<div class="meta">#{rank} · score {format_number(float(table[column][row]))} · index {idx} · '
        f'id {esc(table["id"][row])} · <span class="tag">{esc(table["source"][row])}</span>{tag}</div>'
        f'{_text_block(pool[idx] if pool is not None else None)}</td>'
    )


def _subtask_section(sel: Selection, pool: Sequence[Record] | None, name: str, group: list[Record], top_n: int) -> str:
    """Subtask ``name``: its top ``top_n`` pool examples beside (up to ``top_n`` of) its target examples."""
    table = sel.table
    column = ranking_column(table, name)
    parts = [f'<section class="subtask" data-subtask="{esc(name)}"><h3>{esc(name)}</h3>']
    if column is None:
        order = np.zeros(0, dtype=np.int64)
        parts.append(f'<p class="note">{NO_SCORES}: no pool ranking to show.</p>')
    else:
        order = ranking(table[column], table["index"])[:top_n]
        fallback = column == "score" and subtask_columns(table)
        parts.append(f'<p class="meta">top {len(order)} pool examples by <code>{esc(column)}</code>'
                     f"{' (no per-subtask column for this subtask)' if fallback else ''}; "
                     f"{len(group)} target example(s) in this subtask.</p>")
    if not group:
        parts.append('<p class="note">no target examples for this subtask (none given or recorded).</p>')
    shown_targets = group[:top_n]
    body = []
    for i in range(max(len(order), len(shown_targets))):
        left = _pool_example(sel, pool, name, column, int(order[i]), i + 1) if i < len(order) else "<td></td>"
        if i < len(shown_targets):
            t = shown_targets[i]
            right = (f'<td data-key="target_example" data-subtask="{esc(name)}" data-id="{esc(t.id)}">'
                     f'<div class="meta">target · id {esc(t.id)}</div>{_text_block(t)}</td>')
        else:
            right = "<td></td>"
        body.append(f"<tr>{left}{right}</tr>")
    if body:
        parts.append(f'<table class="examples" data-subtask="{esc(name)}"><tr><th>top pool examples</th>'
                     f"<th>target examples</th></tr>{''.join(body)}</table>")
    parts.append("</section>")
    return "".join(parts)


def _examples_html(sel: Selection, pool: Sequence[Record] | None, targets: Sequence[Record] | None, top_n: int) -> str:
    """(e) One section per target subtask: those of the targets, then those with a score column only."""
    target_groups: dict[str, list[Record]] = {}
    for r in targets or []:
        target_groups.setdefault(subtask_label(r), []).append(r)
    names = list(dict.fromkeys([*target_groups, *subtask_columns(sel.table)]))
    if not names:
        return '<p class="note">no target subtasks: no targets given or recorded, and no per-subtask score columns.</p>'
    return "".join(_subtask_section(sel, pool, name, target_groups.get(name, []), top_n) for name in names)


def render_html(nums: dict[str, Any], comp: list[dict[str, Any]], plots: dict[str, bytes | None],
                inputs: SelectionInputs, top_n: int) -> str:
    """The whole page.

    Args:
        nums: :func:`~lightning_less.analysis.stats.summary_numbers` of the selection.
        comp: :func:`~lightning_less.analysis.stats.composition` of the selection.
        plots: PNG bytes by :data:`~lightning_less.analysis.plots.PLOT_FILES` name (``None``: not drawn).
        inputs: the selection, its records and the warnings to show.
        top_n: pool (and target) examples shown per target subtask.
    """
    sel = inputs.selection
    method = nums["method"]
    title = f"Selection report: {method} — {sel.path}"
    notes = "".join(f'<p class="warning">{esc(w)}</p>' for w in inputs.warnings)
    if nums["budget_k"] is not None and nums["budget_k"] != nums["k"]:
        notes += (f'<p class="warning">the manifest budget k ({nums["budget_k"]}) differs from the number selected '
                  f'in scores.csv ({nums["k"]}).</p>')

    def plot_or_note(name: str, alt: str, missing: str) -> str:
        data = plots.get(name)
        return _img(name, data, alt) if data else f'<p class="note" id="plot-{name}-missing">{esc(missing)}</p>'

    scored = has_scores(sel.table["score"])
    no_subtasks = "no per-subtask score columns in this selection." if scored else NO_SCORES + "."
    body = f"""
<h1>Selection report: <span id="method">{esc(method)}</span></h1>
<p class="meta">selection <code>{esc(sel.path)}</code> · library {esc(sel.manifest.get('library_version', '?'))} ·
{esc(inputs.pool_note)} · {esc(inputs.targets_note)}</p>
{notes}
<h2>Summary</h2>
{_summary_html(nums)}
<h2>(a) Score distribution</h2>
{plot_or_note("scores", "score distribution", NO_SCORES + ".")}
<h2>(b) Composition by source</h2>
{plot_or_note("composition", "composition by source", "")}
{_composition_html(comp)}
<h2>(c) Per-subtask score distributions</h2>
{plot_or_note("subtasks", "per-subtask scores", no_subtasks)}
<h2>(d) Length distribution</h2>
{plot_or_note("lengths", "length distribution", "pool records unavailable: " + inputs.pool_note)}
<h2>(e) Top pool examples per target subtask</h2>
{_examples_html(sel, inputs.pool, inputs.targets, top_n)}
"""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>{body}</body></html>\n"
    )
