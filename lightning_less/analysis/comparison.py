"""Measures, tables and the figure of a comparison of selection methods (``lightning-less compare``).

Every selection is measured the same way, from the ``source`` of its examples:

* ``k``: the number of examples selected (``full`` always takes the whole pool);
* ``target_share``: the share of the selected examples that the relevance rule
  (:class:`TargetRule`, :func:`target_share`) counts as the target task, beside
  ``pool_share``, the same share over the whole pool (what a uniform sample gets on
  average). A record is relevant when its ``source`` is one of the *target sources* or
  matches ``target_source_regex``; the target sources default to the target records'
  own ``source`` values (their ``dataset`` / ``source`` field, else the target file's
  name stem) when neither is given. The built-in demo measures with the same rule
  (its task rule ``^<task>_(en|es)$``);
* ``form_share`` (with ``target_form``, a regular expression searched in ``source``,
  e.g. ``_es$``): the share of the selection in the targets' surface form, whatever
  the task, beside ``pool_form_share``;
* ``group_shares`` (with ``group_by_regex``): the share of every group of sources, a
  group being the regex's first capture group (or whole match) in ``source``, and
  ``(other)`` where it does not match;
* ``composition``: the ``top_sources`` most frequent sources of the selection;
* the Jaccard overlap ``|A ∩ B| / |A ∪ B|`` of every two methods' selected index sets.

The result (:func:`lightning_less.recipes.compare.compare`) is written as
``comparison.json``, :func:`comparison_csv`, :func:`comparison_markdown` and
:func:`~lightning_less.analysis.comparison_plot.plot_comparison`; :class:`Comparison`
renders it as a rich table.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

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


@dataclass(frozen=True)
class TargetRule:
    """The relevance rule: which records count as the target task (``relevant(record) -> bool``)."""

    sources: frozenset[str] = frozenset()
    """``source`` values that count as the target task."""
    pattern: re.Pattern | None = None
    """A regex searched in ``source``: a match counts as the target task."""

    def source_is_target(self, source: str) -> bool:
        """Whether a record of this ``source`` counts as the target task."""
        return source in self.sources or (self.pattern is not None and self.pattern.search(source) is not None)

    def __call__(self, record: Record) -> bool:
        return self.source_is_target(record.source)

    def describe(self) -> dict[str, Any]:
        """The rule as recorded in results (``target_sources``, ``target_source_regex``)."""
        return {"target_sources": sorted(self.sources), "target_source_regex": self.pattern.pattern if self.pattern else None}


def target_rule(target_sources: Sequence[str] | None = None, target_source_regex: str | None = None,
                targets: Sequence[Record] = ()) -> TargetRule:
    """The relevance rule from a list of sources and/or a regex on ``source``; else the ``targets``' own sources.

    Raises:
        InputError: nothing to build the rule from, or a bad regex (naming its flag).
    """
    pattern = _compile(target_source_regex, "target_source_regex")
    if target_sources is None and pattern is None:
        if not targets:
            raise InputError("give --targets, --target_sources or --target_source_regex (the pool sources of the target task)")
        target_sources = [r.source for r in targets]
    return TargetRule(frozenset(target_sources or ()), pattern)


def target_share(records: Sequence[Record], relevant: Callable[[Record], bool]) -> float:
    """The share of ``records`` that ``relevant`` counts as the target task (0.0 for none): one definition for
    ``compare`` and ``demo``."""
    return share([relevant(r) for r in records])


def measure(sources: Sequence[str], rule: TargetRule, form: re.Pattern | None,
            groups: re.Pattern | None, group_labels: Sequence[str], top_sources: int) -> dict[str, Any]:
    """The shares of one set of examples given their sources."""
    is_target = [rule.source_is_target(s) for s in sources]
    row: dict[str, Any] = {"k": len(sources), "n_target": int(sum(is_target)), "target_share": share(is_target)}
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
    target_source_regex: str | None = None
    """A regex searched in ``source``: matching pool records count as the target task too (e.g. ``^last_letter_``)."""
    target_form: str | None = None
    """A regex searched in ``source`` for ``form_share`` (e.g. ``_es$``)."""
    group_by_regex: str | None = None
    """A regex whose first group (or match) in ``source`` names a group, for ``group_shares``."""
    top_sources: int = 5
    """How many of a selection's most frequent sources to list."""

    def __post_init__(self) -> None:
        self.form, self.groups = _compile(self.target_form, "target_form"), _compile(self.group_by_regex, "group_by_regex")
        _compile(self.target_source_regex, "target_source_regex")
        if self.top_sources < 1:
            raise InputError(f"--top_sources must be >= 1, got {self.top_sources}")

    def resolve_targets(self, targets: Sequence[Record]) -> tuple[TargetRule, str]:
        """The relevance rule and where it comes from (``"targets"`` or ``"given"``)."""
        given = self.target_sources is not None or self.target_source_regex is not None
        return target_rule(self.target_sources, self.target_source_regex, targets), "given" if given else "targets"


def measure_selections(pool: Sequence[Record], targets: Sequence[Record], selected: Mapping[str, np.ndarray],
                       settings: ShareSettings) -> dict[str, Any]:
    """The measures of every selection: ``target_sources``, ``target_sources_from``, ``pool`` and ``rows``."""
    rule, sources_from = settings.resolve_targets(targets)
    target_sources, pool_sources = sorted(rule.sources), [r.source for r in pool]
    if not any(rule.source_is_target(s) for s in set(pool_sources)):
        rank_zero_warn(f"no pool source counts as the target task ({rule.describe()}): every target_share is 0 "
                       "(pass target_sources or target_source_regex to name the pool sources of the target task)")
    form, groups = settings.form, settings.groups
    labels = sorted({group_of(s, groups) for s in pool_sources}) if groups is not None else []
    pool_row = measure(pool_sources, rule, form, groups, labels, settings.top_sources)
    rows: dict[str, dict[str, Any]] = {}
    for method, indices in selected.items():
        row = {"method": method, **measure([pool_sources[i] for i in indices], rule, form, groups, labels, settings.top_sources)}
        row["pool_share"] = pool_row["target_share"]
        if form is not None:
            row["pool_form_share"] = pool_row["form_share"]
        rows[method] = row
    kept = ("target_share", "form_share", "group_shares", "composition")
    return {"target_sources": target_sources, "target_source_regex": rule.describe()["target_source_regex"],
            "target_sources_from": sources_from,
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
