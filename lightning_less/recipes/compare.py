"""Compare selection methods on one pool, one target set and one budget (``lightning-less compare``).

Each method is run through :func:`~lightning_less.selection.runner.run_selection` into
``<output>/selections/<method>`` (an existing selection made the same way is reused;
one made another way is refused unless ``overwrite``), then every selection is
measured the same way:

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
* the Jaccard overlap ``|A ∩ B| / |A ∪ B|`` of every two methods' selected index sets;
* with ``train``: ``target_loss`` and ``target_exact_match`` of a model trained on the
  selection (:func:`~lightning_less.recipes.pipeline.train_and_evaluate`, into
  ``<output>/train/<method>``; finished trainings are skipped).

Outputs in ``output``: ``comparison.json`` (everything, paths under ``output`` written
relative to it, so the same inputs give the same file), ``comparison.csv`` (one row
per method), ``comparison.md`` (markdown tables) and ``comparison.png`` (target share
per method against the pool's share, the Jaccard heatmap and, when trained, the
target loss per method).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_less.data.records import Record, files_fingerprint, read_records

FORMAT_VERSION = 1
FILES = {"json": "comparison.json", "csv": "comparison.csv", "md": "comparison.md", "png": "comparison.png"}
OTHER_GROUP = "(other)"
TARGET_METHODS = ("less", "rds", "bm25", "dsir")  # methods whose selection depends on the targets
TRAIN_KEYS = ("target_loss", "target_exact_match", "n_train")


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


# --------------------------------------------------------------------------- selections


def _real(path: Any) -> str | None:
    return None if path is None else os.path.realpath(str(path))


def _stale_reason(manifest: dict, method: str, pool: list[dict], targets: list[dict], expected: dict[str, Any]) -> str | None:
    """Why an existing selection was made otherwise than asked now (None when it can be reused).

    ``run_selection`` reuses a selection with the same method, seed and budget over an
    unchanged pool; this checks those and also what it does not: the targets and the
    method's inputs.
    """
    inputs, params = manifest.get("inputs", {}), manifest.get("params", {})
    if manifest.get("method") != method:
        return f"it holds a {manifest.get('method')} selection"
    if manifest.get("seed") != expected["seed"]:
        return f"it was selected with seed {manifest.get('seed')}, not {expected['seed']}"
    if manifest.get("n_selected") != expected["k"]:
        return f"it holds {manifest.get('n_selected')} examples, the budget is {expected['k']}"
    if [p.get("sha256") for p in inputs.get("pool", [])] != [p["sha256"] for p in pool]:
        return "the pool files changed since"
    if method in TARGET_METHODS:
        recorded = [t.get("sha256") for t in inputs.get("targets", [])]
        if recorded != [t["sha256"] for t in targets]:
            return "it was selected for other target files"
    if method == "less":
        for key in ("pool_store", "target_store"):
            if _real(inputs.get(key)) != _real(expected[key]):
                return f"its {key} is {inputs.get(key)}, not {expected[key]}"
        if expected["dim"] is not None and inputs.get("dim") != expected["dim"]:
            return f"it used dim {inputs.get('dim')}, not {expected['dim']}"
    if method in ("less", "rds") and params.get("aggregation") != expected["aggregation"]:
        return f"it used aggregation {params.get('aggregation')!r}, not {expected['aggregation']!r}"
    if method == "rds" and params.get("model") != expected["model"]:
        return f"it used model {params.get('model')!r}, not {expected['model']!r}"
    if method == "s2l" and expected["trajectories"] is not None and _real(inputs.get("trajectories")) != _real(expected["trajectories"]):
        return f"it used trajectories {inputs.get('trajectories')}, not {expected['trajectories']}"
    return None


def _check_inputs(methods: Sequence[str], given: Mapping[str, Any], pool_store, target_store, model, trajectories,
                  train: bool, eval_files, train_model, metrics: Mapping[str, Any]) -> None:
    from lightning_less.selection.runner import METHODS

    if not methods:
        raise ValueError("no methods to compare")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}: expected some of {list(METHODS)}")
    dup = sorted({m for m in methods if list(methods).count(m) > 1})
    if dup:
        raise ValueError(f"method(s) {dup} given more than once")
    extra = sorted(set(given) - set(methods))
    if extra:
        raise ValueError(f"selection_dirs names method(s) {extra} that are not compared")
    to_run = [m for m in methods if m not in given]
    if "less" in to_run and (pool_store is None or target_store is None):
        raise ValueError("method 'less' needs pool_store and target_store (gradient datastores), or selection_dirs['less']")
    if "rds" in to_run and model is None:
        raise ValueError("method 'rds' needs model (the model whose hidden states are compared)")
    if "s2l" in to_run and trajectories is None and model is None:
        raise ValueError("method 's2l' needs trajectories (a trajectory store) or model (a proxy to train)")
    if train and any(m not in metrics for m in methods):
        if not eval_files:
            raise ValueError("train=True needs eval files (the target task's held-out examples) to measure target loss")
        if train_model is None:
            raise ValueError("train=True needs model or train_settings.model_name_or_path (the model trained on each selection)")


def _paths(value: Any) -> list[str]:
    """One path or several as a list of strings (``None`` gives ``[]``)."""
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    return [os.fspath(v) for v in value]


def _budget(n_pool: int, fraction: float | None, count: int | None) -> dict[str, Any]:
    from lightning_less.selection.budget import budget_info

    if fraction is None and count is None:
        fraction = 0.05
    return budget_info(n_pool, fraction, count)


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when it lies under it (POSIX form), else as given."""
    path, root = Path(path).resolve(), root.resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


# --------------------------------------------------------------------------- main entry


def compare_methods(
    pool: Sequence[str] | str,
    targets: Sequence[str] | str | None,
    methods: Sequence[str],
    output: str | os.PathLike,
    fraction: float | None = None,
    count: int | None = None,
    seed: int = 0,
    target_sources: Sequence[str] | None = None,
    target_form: str | None = None,
    group_by_regex: str | None = None,
    top_sources: int = 5,
    pool_store: str | os.PathLike | None = None,
    target_store: str | os.PathLike | None = None,
    dim: int | None = None,
    aggregation: str = "max_subtask_mean",
    model: str | None = None,
    trajectories: str | os.PathLike | None = None,
    n_clusters: int = 100,
    max_length: int = 2048,
    train: bool = False,
    eval_files: Sequence[str] | str | None = None,
    train_settings: Any = None,
    trainer: dict | None = None,
    selection_dirs: Mapping[str, str | os.PathLike] | None = None,
    metrics: Mapping[str, Mapping[str, Any]] | None = None,
    plot: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run several selection methods on the same pool, targets and budget and compare their selections.

    Args:
        pool: the pool's jsonl file(s).
        targets: the target examples' jsonl file(s) (needed by less, rds, bm25, dsir, and for
            the default ``target_sources``).
        methods: the methods, in the order shown (``less``, ``rds``, ``s2l``, ``random``,
            ``bm25``, ``dsir``, ``full``; ``full`` takes the whole pool whatever the budget).
        output: the comparison directory; selections go to ``<output>/selections/<method>``.
        fraction: budget as a fraction of the pool (default 0.05 when ``count`` is not given).
        count: budget as a number of examples.
        seed: seed of every sampled method (and of training).
        target_sources: pool ``source`` values that count as the target task for
            ``target_share``; default: the target records' own ``source`` values.
        target_form: a regex searched in ``source`` for ``form_share`` (e.g. ``_es$``).
        group_by_regex: a regex whose first group (or match) in ``source`` names a group;
            adds ``group_shares`` per method.
        top_sources: how many of a selection's most frequent sources to list.
        pool_store: LESS: the pool's ``adam`` gradient datastore.
        target_store: LESS: the targets' ``sgd`` gradient datastore.
        dim: LESS: which projected dim to use.
        aggregation: LESS / RDS subtask aggregation.
        model: RDS: the model whose hidden states are compared; S2L: a proxy to train when
            no trajectories are given; training: the model trained on each selection
            (unless ``train_settings.model_name_or_path``).
        trajectories: S2L: a loss-trajectory store.
        n_clusters: S2L: number of k-means clusters.
        max_length: truncation length in tokens (RDS, S2L proxy, training).
        train: train a model on each selection and evaluate it on ``eval_files``.
        eval_files: the target task's held-out examples (with ``train``).
        train_settings: a :class:`~lightning_less.recipes.pipeline.TrainSettings` (default: its defaults).
        trainer: extra ``Trainer`` arguments (S2L proxy, training).
        selection_dirs: selections already made elsewhere, ``{method: dir}`` (e.g. the
            pipeline's LESS selection); they are checked against the pool and the budget
            and used instead of running the method.
        metrics: results already computed, ``{method: {"target_loss": ..., ...}}``; they
            are merged into the rows and those methods are not trained again.
        plot: write ``comparison.png``.
        overwrite: redo selections (and trainings) made with other settings instead of refusing.

    Returns:
        The comparison, as written to ``comparison.json``: ``methods``, ``budget``,
        ``target_sources``, ``pool`` (the pool's shares), ``rows`` (``{method: {k,
        target_share, ...}}``), ``jaccard`` (``{"methods", "matrix"}``), ``files``
        (absolute output paths; relative ones in the JSON).
    """
    from lightning_less.selection.outputs import MANIFEST_FILE, StaleSelectionError, read_selection
    from lightning_less.selection.runner import run_selection

    pool, targets, eval_files = _paths(pool), _paths(targets), _paths(eval_files)
    methods = [methods] if isinstance(methods, str) else list(methods)
    given = {m: Path(p) for m, p in (selection_dirs or {}).items()}
    metrics = {m: dict(v) for m, v in (metrics or {}).items()}
    if train_settings is None and train:
        from lightning_less.recipes.pipeline import TrainSettings

        train_settings = TrainSettings()
    train_model = (getattr(train_settings, "model_name_or_path", None) or model) if train else None
    _check_inputs(methods, given, pool_store, target_store, model, trajectories, train, eval_files, train_model, metrics)
    if top_sources < 1:
        raise ValueError(f"top_sources must be >= 1, got {top_sources}")
    form = re.compile(target_form) if target_form else None
    groups = re.compile(group_by_regex) if group_by_regex else None

    pool_records = read_records(list(pool))
    target_records: list[Record] = read_records(list(targets)) if targets else []
    if target_sources is None:
        if not target_records:
            raise ValueError("give targets or target_sources (the pool sources of the target task)")
        target_sources, sources_from = sorted({r.source for r in target_records}), "targets"
    else:
        target_sources, sources_from = sorted(set(target_sources)), "given"
    tset = set(target_sources)
    pool_sources = [r.source for r in pool_records]
    if not tset & set(pool_sources):
        rank_zero_warn(f"none of the target sources {target_sources} occurs in the pool: every target_share is 0 "
                       "(pass target_sources to name the pool sources of the target task)")
    budget = _budget(len(pool_records), fraction, count)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    pool_fp = files_fingerprint(list(pool))
    target_fp = files_fingerprint(list(targets)) if targets else []
    expected = {"pool_store": pool_store, "target_store": target_store, "dim": dim, "aggregation": aggregation,
                "model": model, "trajectories": trajectories, "seed": seed}

    selected: dict[str, np.ndarray] = {}
    dirs: dict[str, Path] = {}
    for method in methods:
        if method in given:
            sel = read_selection(given[method], pool_records)  # raises when the pool changed since
            dirs[method] = given[method]
        else:
            sel_dir = out / "selections" / method
            redo = False  # a selection made the same way is reused even with overwrite
            if (sel_dir / MANIFEST_FILE).exists():
                manifest = json.loads((sel_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
                want = len(pool_records) if method == "full" else budget["k"]
                reason = _stale_reason(manifest, method, pool_fp, target_fp, {**expected, "k": want})
                if reason and not overwrite:
                    raise StaleSelectionError(f"{sel_dir} cannot be reused: {reason}; pass overwrite=True or use another output")
                redo = reason is not None
            run_selection(method, list(pool), list(targets) if targets else None, sel_dir,
                          fraction=1.0 if method == "full" else budget["fraction"],
                          count=None if method == "full" else budget["count"], seed=seed,
                          pool_store=pool_store, target_store=target_store, dim=dim, aggregation=aggregation,
                          model=model, trajectories=trajectories, n_clusters=n_clusters, max_length=max_length,
                          trainer=trainer, overwrite=redo)
            sel = read_selection(sel_dir, pool_records)
            dirs[method] = sel_dir
        want = len(pool_records) if method == "full" else budget["k"]
        if len(sel.selected) != want:
            raise ValueError(f"the {method} selection {dirs[method]} has {len(sel.selected)} examples, the budget is {want}")
        selected[method] = sel.selected

    if train:
        from lightning_less.recipes.pipeline import train_and_evaluate

        for method in methods:
            if method in metrics:
                continue
            res = train_and_evaluate(dirs[method], list(eval_files), out / "train" / method, train_model, train_settings,
                                     max_length, seed, trainer, overwrite)
            metrics[method] = res

    group_labels = sorted({group_of(s, groups) for s in pool_sources}) if groups is not None else []
    pool_row = measure(pool_sources, tset, form, groups, group_labels, top_sources)
    rows: dict[str, dict[str, Any]] = {}
    for method in methods:
        row = {"method": method, "selection": _rel(dirs[method], out)}
        row.update(measure([pool_sources[i] for i in selected[method]], tset, form, groups, group_labels, top_sources))
        row["pool_share"] = pool_row["target_share"]
        if form is not None:
            row["pool_form_share"] = pool_row["form_share"]
        for key in TRAIN_KEYS:
            if key in metrics.get(method, {}):
                row[key] = _clean(metrics[method][key])
        rows[method] = row

    files = {key: out / name for key, name in FILES.items() if key != "png" or plot}
    result: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "methods": methods,
        "budget": budget,
        "seed": seed,
        "inputs": {"pool": pool_fp, "targets": target_fp},
        "n_pool": len(pool_records),
        "target_sources": list(target_sources),
        "target_sources_from": sources_from,
        "target_form": target_form,
        "group_by_regex": group_by_regex,
        "pool": {key: pool_row[key] for key in ("target_share", "form_share", "group_shares", "composition") if key in pool_row},
        "rows": rows,
        "jaccard": {"methods": methods, "matrix": jaccard_matrix(selected)},
        "trained": any(r.get("target_loss") is not None for r in rows.values()),
        "files": {key: _rel(path, out) for key, path in files.items()},
    }
    _write_text(files["json"], json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    _write_text(files["csv"], comparison_csv(result))
    _write_text(files["md"], comparison_markdown(result))
    if plot:
        files["png"].write_bytes(plot_comparison(result))
    rank_zero_info(f"comparison of {', '.join(methods)} written to {files['json']}")
    return {**result, "files": {key: str(path) for key, path in files.items()}}


def _clean(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- tables


def _columns(result: dict) -> list[tuple[str, str]]:
    """(key, header) of the scalar per-method columns present in ``result``."""
    cols = [("k", "k"), ("target_share", "target_share"), ("pool_share", "pool_share")]
    if result.get("target_form"):
        cols += [("form_share", "form_share"), ("pool_form_share", "pool_form_share")]
    if any("target_loss" in r for r in result["rows"].values()):
        cols += [("target_loss", "target_loss"), ("target_exact_match", "target_exact_match")]
    return cols


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (bool, int, np.integer)):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def _top(row: dict, n: int = 3) -> str:
    return ", ".join(f"{c['source']} {c['share']:.2f}" for c in row["composition"][:n])


def comparison_csv(result: dict) -> str:
    """One row per method: the scalar columns, group shares, Jaccard with every method, top sources."""
    import io

    methods = result["methods"]
    groups = list(result["pool"].get("group_shares", {}))
    header = ["method"] + [k for k, _ in _columns(result)] + [f"group/{g}" for g in groups]
    header += [f"jaccard/{m}" for m in methods] + ["top_sources", "selection"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for i, method in enumerate(methods):
        row = result["rows"][method]
        values = [method] + ["" if row.get(k) is None else repr(row[k]) if isinstance(row[k], float) else row[k]
                             for k, _ in _columns(result)]
        values += [repr(row["group_shares"][g]) for g in groups]
        values += [repr(v) for v in result["jaccard"]["matrix"][i]]
        values += [";".join(f"{c['source']}:{c['count']}" for c in row["composition"]), row["selection"]]
        writer.writerow(values)
    return buf.getvalue()


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def comparison_markdown(result: dict) -> str:
    """The comparison as markdown: a table per method, group shares, and the Jaccard matrix."""
    methods = result["methods"]
    budget = result["budget"]
    how = f"fraction {budget['fraction']}" if budget.get("fraction") is not None else f"count {budget['count']}"
    lines = [
        "# Selection methods compared",
        "",
        f"Pool: {result['n_pool']} examples; budget: {how} (k = {budget['k']}; `full` takes the whole pool); seed {result['seed']}.",
        "",
        f"`target_share`: share of the selection whose source is one of {', '.join(f'`{s}`' for s in result['target_sources'])} "
        f"({'the target records’ own sources' if result['target_sources_from'] == 'targets' else 'given'}); "
        f"`pool_share`: the same share over the whole pool.",
    ]
    if result.get("target_form"):
        lines.append(f"`form_share`: share whose source matches `{_md_escape(result['target_form'])}`.")
    lines.append("")
    cols = _columns(result)
    lines.append("| method | " + " | ".join(h for _, h in cols) + " | top sources |")
    lines.append("|---|" + "---:|" * len(cols) + "---|")
    for method in methods:
        row = result["rows"][method]
        lines.append(f"| {_md_escape(method)} | " + " | ".join(_num(row.get(k)) for k, _ in cols)
                     + f" | {_md_escape(_top(row, 5))} |")
    groups = list(result["pool"].get("group_shares", {}))
    if groups:
        lines += ["", f"## Group shares (`{_md_escape(result['group_by_regex'])}`)", "",
                  "| method | " + " | ".join(_md_escape(g) for g in groups) + " |",
                  "|---|" + "---:|" * len(groups)]
        for method in methods:
            lines.append(f"| {_md_escape(method)} | " + " | ".join(_num(result["rows"][method]["group_shares"][g]) for g in groups) + " |")
        lines.append("| *pool* | " + " | ".join(_num(result["pool"]["group_shares"][g]) for g in groups) + " |")
    lines += ["", "## Overlap (Jaccard of the selected sets)", "",
              "| | " + " | ".join(_md_escape(m) for m in methods) + " |", "|---|" + "---:|" * len(methods)]
    for i, method in enumerate(methods):
        lines.append(f"| {_md_escape(method)} | " + " | ".join(_num(v, 2) for v in result["jaccard"]["matrix"][i]) + " |")
    return "\n".join(lines) + "\n"


SHORT = {"target_share": "target", "pool_share": "pool", "form_share": "form", "pool_form_share": "pool form",
         "target_loss": "loss", "target_exact_match": "exact"}


def print_comparison(result: dict, console: Any = None) -> None:
    """Print the comparison as a rich table (short headers), then the output files."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    cols = _columns(result)
    caption = "target / pool: share of the selection / of the pool from the target sources"
    if result.get("target_form"):
        caption += f"; form / pool form: share matching {escape(result['target_form'])}"
    if any("target_loss" in k for k, _ in cols):
        caption += "; loss / exact: target loss and exact match after training"
    table = Table(title=f"selection methods compared (k = {result['budget']['k']} of {result['n_pool']}; "
                        f"target sources: {escape(', '.join(result['target_sources']))})", caption=caption)
    table.add_column("method", no_wrap=True)
    for key, _ in cols:
        table.add_column(SHORT.get(key, key), justify="right", no_wrap=True)
    table.add_column("top sources", overflow="fold")
    for method in result["methods"]:
        row = result["rows"][method]
        table.add_row(method, *(_num(row.get(k)) for k, _ in cols), escape(_top(row)))
    console.print(table)
    for key, path in result["files"].items():
        console.print(f"{key}: {escape(str(path))}", soft_wrap=True)


# --------------------------------------------------------------------------- figure


def plot_comparison(result: dict) -> bytes:
    """PNG: target share per method (pool share dashed), the Jaccard heatmap, and target loss when trained."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = result["methods"]
    rows = result["rows"]
    trained = any(rows[m].get("target_loss") is not None for m in methods)
    n_panels = 3 if trained else 2
    width = max(4.5, 0.7 * len(methods) + 2.5)
    fig = Figure(figsize=(width * n_panels, 4.6), dpi=100)
    FigureCanvasAgg(fig)
    rotate = len(methods) > 4
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.2 if rotate else 0.1, top=0.86, wspace=0.35)
    axes = fig.subplots(1, n_panels)
    x = np.arange(len(methods))

    ax = axes[0]
    form = bool(result.get("target_form"))
    w = 0.38 if form else 0.6
    bars = ax.bar(x - (w / 2 if form else 0), [rows[m]["target_share"] for m in methods], w, color="#2f6fdf",
                  label="target_share")
    ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.axhline(result["pool"]["target_share"], color="#2f6fdf", linestyle="--", linewidth=1.3,
               label=f"pool share = {result['pool']['target_share']:.2f}")
    top = [rows[m]["target_share"] for m in methods] + [result["pool"]["target_share"]]
    if form:
        fb = ax.bar(x + w / 2, [rows[m]["form_share"] for m in methods], w, color="#f28e2b", label="form_share")
        ax.bar_label(fb, fmt="%.2f", fontsize=7, padding=1)
        ax.axhline(result["pool"]["form_share"], color="#f28e2b", linestyle=":", linewidth=1.3,
                   label=f"pool form share = {result['pool']['form_share']:.2f}")
        top += [rows[m]["form_share"] for m in methods]
    ax.set_xticks(x, methods, rotation=30 if rotate else 0, ha="right" if rotate else "center")
    ax.set_ylim(0, min(1.0, max(top + [0.05])) * 1.45 + 0.02)  # headroom for the legend
    ax.set_yticks([t for t in ax.get_yticks() if 0 <= t <= 1 + 1e-9])  # no share ticks above 1
    ax.set_ylabel("share of the selection")
    ax.set_title("Target-source share per method", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", ncol=2)

    ax = axes[1]
    mat = np.asarray(result["jaccard"]["matrix"], dtype=float)
    im = ax.imshow(mat, vmin=0.0, vmax=1.0, cmap="Blues")
    for i in range(len(methods)):
        for j in range(len(methods)):
            ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if mat[i, j] > 0.6 else "black")
    ax.set_xticks(x, methods, rotation=30 if rotate else 0, ha="right" if rotate else "center")
    ax.set_yticks(x, methods)
    ax.set_title("Overlap of selections (Jaccard)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)

    if trained:
        ax = axes[2]
        losses = [rows[m].get("target_loss") for m in methods]
        values = [np.nan if v is None else v for v in losses]
        lb = ax.bar(x, values, 0.6, color="#59a14f")
        ax.bar_label(lb, labels=["" if v is None else f"{v:.3f}" for v in losses], fontsize=7, padding=1)
        for xi, v in zip(x, losses):
            if v is None:
                ax.text(xi, 0, "n/a", ha="center", va="bottom", fontsize=8, color="#666666")
        ax.set_xticks(x, methods, rotation=30 if rotate else 0, ha="right" if rotate else "center")
        ax.set_xlim(-0.6, len(methods) - 0.4)  # NaN bars do not widen the axis
        finite = [v for v in losses if v is not None]
        if finite:
            ax.set_ylim(0, max(finite) * 1.2)
        ax.set_ylabel("target loss (lower is better)")
        ax.set_title("Target loss after training on the selection", fontsize=10)
    fig.suptitle(f"{len(methods)} methods, k = {result['budget']['k']} of {result['n_pool']}", fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
