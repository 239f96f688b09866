"""Compare selection methods on one pool, one target set and one budget (``lightning-less compare``).

Every method goes through the selection registry exactly as ``select`` does
(:func:`~lightning_less.recipes.select.plan_step` / :func:`~lightning_less.recipes.select.run_step`)
into ``<output>/selections/<method>``: the same needs and input checks, the same reuse
rule (a selection made the same way is reused, one made otherwise is refused unless
``overwrite``), the same S2L proxy (``<output>/selections/s2l_proxy``). Every method is
checked, and every existing selection judged, before the first one runs.

Each selection is then measured the same way (:mod:`lightning_less.analysis.comparison`:
target share, form share, group shares, top sources, Jaccard overlaps) and, with
``train``, a model is trained on it and evaluated on the target task
(:func:`~lightning_less.recipes.pipeline.train_and_evaluate`, into ``<output>/train/<method>``;
finished trainings are skipped).

Outputs in ``output``: ``comparison.json`` (everything, paths under ``output`` written
relative to it, so the same inputs give the same file), ``comparison.csv`` (one row
per method), ``comparison.md`` (markdown tables) and ``comparison.png``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from lightning_less.analysis.comparison import (
    Comparison,
    ShareSettings,
    comparison_csv,
    comparison_markdown,
    jaccard_matrix,
    measure_selections,
    print_comparison,
)
from lightning_less.analysis.comparison_plot import plot_comparison
from lightning_less.data.records import Record, as_paths, files_fingerprint, read_records
from lightning_less.data.subtasks import check_target_subtasks
from lightning_less.errors import InputError, MissingInputError
from lightning_less.recipes.pipeline import TrainSettings, train_and_evaluate
from lightning_less.recipes.s2l_proxy import ProxySettings
from lightning_less.recipes.select import SelectionStep, plan_step, run_step
from lightning_less.selection.outputs import read_selection
from lightning_less.selection.registry import SelectionRequest, get_method
from lightning_less.selection.runner import request_budget

FORMAT_VERSION = 1
FILES = {"json": "comparison.json", "csv": "comparison.csv", "md": "comparison.md", "png": "comparison.png"}
TRAIN_KEYS = ("target_loss", "target_exact_match", "n_train")


def _check_methods(methods: Sequence[str], given: Mapping[str, Path]) -> list[str]:
    methods = [methods] if isinstance(methods, str) else list(methods)
    if not methods:
        raise InputError("no methods to compare (--methods)")
    for method in methods:
        get_method(method)  # names the unknown one and lists the others
    dup = sorted({m for m in methods if methods.count(m) > 1})
    if dup:
        raise InputError(f"method(s) {dup} given more than once (--methods)")
    extra = sorted(set(given) - set(methods))
    if extra:
        raise InputError(f"selection_dirs names method(s) {extra} that are not compared")
    return methods


def _plan(request: SelectionRequest, methods: Sequence[str], given: Mapping[str, Path], out: Path,
          proxy: ProxySettings | None, overwrite: bool, pool: list[Record],
          targets: list[Record]) -> dict[str, SelectionStep]:
    """Every method to run, checked and planned before any of them runs."""
    steps = {}
    for method in methods:
        if method in given:
            continue
        asked = replace(request, fraction=None, count=None) if get_method(method).whole_pool else request
        steps[method] = plan_step(method, asked, out / "selections" / method, proxy=proxy, overwrite=overwrite,
                                  pool=pool, targets=targets)
    return steps


def _selections(methods: Sequence[str], steps: Mapping[str, SelectionStep], given: Mapping[str, Path],
                pool: list[Record], budget: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Path]]:
    """Run (or reuse) every planned selection and read every selection back, checked against the pool and budget."""
    selected, dirs = {}, {}
    for method in methods:
        dirs[method] = given[method] if method in given else run_step(steps[method])
        sel = read_selection(dirs[method], pool)  # raises when the pool changed since
        want = len(pool) if get_method(method).whole_pool else budget["k"]
        if len(sel.selected) != want:
            raise InputError(f"the {method} selection {dirs[method]} has {len(sel.selected)} examples, the budget is {want}")
        selected[method] = sel.selected
    return selected, dirs


def _train(methods: Sequence[str], dirs: Mapping[str, Path], metrics: dict[str, dict[str, Any]], out: Path,
           request: SelectionRequest, train: TrainSettings, eval_files: Sequence[str], overwrite: bool) -> None:
    """Train on every selection without metrics yet and add its target loss and exact match to ``metrics``."""
    model = train.model_name_or_path or request.model
    for method in methods:
        if method not in metrics:
            metrics[method] = train_and_evaluate(dirs[method], list(eval_files), out / "train" / method, model, train,
                                                 request.max_length, request.seed, request.trainer, overwrite)


def _check_training(methods: Sequence[str], metrics: Mapping[str, Any], request: SelectionRequest,
                    train: TrainSettings | None, eval_files: Sequence[str]) -> None:
    if train is None or all(m in metrics for m in methods):
        return
    if not eval_files:
        raise MissingInputError("training needs --eval files (the target task's held-out examples) to measure target loss")
    if not (train.model_name_or_path or request.model):
        raise MissingInputError("training needs --model or --train_settings.model_name_or_path (the model trained on each selection)")


def _clean(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when it lies under it (POSIX form), else as given."""
    path, root = Path(path).resolve(), root.resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write(result: dict[str, Any], out: Path, plot: bool) -> dict[str, Path]:
    files = {key: out / name for key, name in FILES.items() if key != "png" or plot}
    result["files"] = {key: _rel(path, out) for key, path in files.items()}
    _write_text(files["json"], json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    _write_text(files["csv"], comparison_csv(result))
    _write_text(files["md"], comparison_markdown(result))
    if plot:
        files["png"].write_bytes(plot_comparison(result))
    return files


def run_comparison(
    request: SelectionRequest,
    methods: Sequence[str],
    output: str | os.PathLike,
    *,
    shares: ShareSettings | None = None,
    proxy: ProxySettings | None = None,
    train: TrainSettings | None = None,
    eval_files: Sequence[str] | str | None = None,
    selection_dirs: Mapping[str, str | os.PathLike] | None = None,
    metrics: Mapping[str, Mapping[str, Any]] | None = None,
    plot: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run several selection methods on the same request (pool, targets, budget, options) and compare them.

    Args:
        request: the pool, targets, budget and method options, shared by every method
            (``full`` takes the whole pool whatever the budget).
        methods: the methods, in the order shown.
        output: the comparison directory; selections go to ``<output>/selections/<method>``.
        shares: how shares are counted (default: :class:`~lightning_less.analysis.comparison.ShareSettings`).
        proxy: the S2L proxy's training settings (s2l with ``request.model`` and no trajectories).
        train: train a model on each selection with these settings and evaluate it on ``eval_files``.
        eval_files: the target task's held-out examples (with ``train``).
        selection_dirs: selections already made elsewhere, ``{method: dir}`` (e.g. the pipeline's
            LESS selection), checked against the pool and the budget and used instead of running the method.
        metrics: results already computed, ``{method: {"target_loss": ..., ...}}``; merged into the
            rows, and those methods are not trained again.
        plot: write ``comparison.png``.
        overwrite: redo selections (and trainings) made with other settings instead of refusing.

    Returns:
        The comparison as written to ``comparison.json`` (``methods``, ``budget``, ``target_sources``,
        ``pool``, ``rows``, ``jaccard``, ...) with absolute paths in ``files``.
    """
    shares, eval_files = shares or ShareSettings(), as_paths(eval_files)
    given = {m: Path(p) for m, p in (selection_dirs or {}).items()}
    metrics = {m: dict(v) for m, v in (metrics or {}).items()}
    methods = _check_methods(methods, given)
    _check_training(methods, metrics, request, train, eval_files)
    pool = read_records(list(request.pool))
    targets = read_records(list(request.targets)) if request.targets else []
    check_target_subtasks(targets)  # also when every selection is given: the targets are the same set
    shares.resolve_targets(targets)  # before any compute: the target sources must be known
    budget = request_budget(request, len(pool))
    out = Path(output)
    steps = _plan(request, methods, given, out, proxy, overwrite, pool, targets)
    out.mkdir(parents=True, exist_ok=True)
    selected, dirs = _selections(methods, steps, given, pool, budget)
    if train is not None:
        _train(methods, dirs, metrics, out, request, train, eval_files, overwrite)

    measured = measure_selections(pool, targets, selected, shares)
    for method, row in measured["rows"].items():
        row["selection"] = _rel(dirs[method], out)
        row.update({key: _clean(metrics[method][key]) for key in TRAIN_KEYS if key in metrics.get(method, {})})
    result: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "methods": methods, "budget": budget, "seed": request.seed,
        "inputs": {"pool": files_fingerprint(request.pool), "targets": files_fingerprint(request.targets)},
        "n_pool": len(pool), "target_sources": measured["target_sources"],
        "target_source_regex": measured["target_source_regex"],
        "target_sources_from": measured["target_sources_from"], "target_form": shares.target_form,
        "group_by_regex": shares.group_by_regex, "pool": measured["pool"], "rows": measured["rows"],
        "jaccard": {"methods": methods, "matrix": jaccard_matrix(selected)},
        "trained": any(r.get("target_loss") is not None for r in measured["rows"].values()),
    }
    files = _write(result, out, plot)
    rank_zero_info(f"comparison of {', '.join(methods)} written to {files['json']}")
    return {**result, "files": {key: str(path) for key, path in files.items()}}


def compare(
    *,
    pool: list[str] | str,
    targets: list[str] | str | None = None,
    methods: list[str],
    output: str,
    fraction: float | None = None,
    count: int | None = None,
    seed: int = 0,
    target_sources: list[str] | None = None,
    target_source_regex: str | None = None,
    target_form: str | None = None,
    group_by_regex: str | None = None,
    top_sources: int = 5,
    pool_store: str | None = None,
    target_store: str | None = None,
    dim: int | None = None,
    aggregation: str = "max_subtask_mean",
    model: str | None = None,
    trajectories: str | None = None,
    n_clusters: int = 100,
    stratify_by_source: bool = False,
    max_length: int = 2048,
    proxy: ProxySettings | None = None,
    train: bool = False,
    eval: list[str] | str | None = None,
    train_settings: TrainSettings | None = None,
    trainer: dict[str, Any] | None = None,
    selection_dirs: dict[str, str] | None = None,
    metrics: dict[str, dict[str, float]] | None = None,
    plot: bool = True,
    overwrite: bool = False,
) -> Comparison:
    """Run several selection methods on the same pool, targets and budget and compare their selections.

    Writes ``<output>/selections/<method>`` (each exactly as ``select`` would; selections
    made the same way are reused) and ``comparison.json``, ``.csv``, ``.md`` and ``.png``:
    per method the budget k, the target share beside the pool's, the top sources, the
    Jaccard overlap between methods and, with ``--train true``, target loss and exact match.

    Args:
        pool: the pool's jsonl file(s) (``--pool a.jsonl`` or ``--pool '[a.jsonl,b.jsonl]'``).
        targets: the target examples' jsonl file(s).
        methods: methods to compare (``--methods '[random,bm25,dsir]'``): ``less``, ``rds``, ``s2l``,
            ``random``, ``bm25``, ``dsir``, ``full`` (``full`` takes the whole pool).
        output: the comparison directory.
        fraction: budget as a fraction of the pool (default 0.05 when ``count`` is not given).
        count: budget as a number of examples (instead of ``fraction``).
        seed: seed of every sampled method, of the S2L proxy and of training.
        target_sources: pool ``source`` (``dataset``) values that count as the target task for
            ``target_share``; default: the target records' own ``source`` values.
        target_source_regex: a regex on ``source``: matching pool records count as the target task too.
        target_form: a regex searched in each ``source`` for an extra ``form_share`` column (e.g. ``_es$``).
        group_by_regex: a regex whose first group in ``source`` names a group; adds per-group shares.
        top_sources: how many of a selection's most frequent sources to list.
        pool_store: less: the pool's ``adam`` gradient datastore.
        target_store: less: the targets' ``sgd`` gradient datastore.
        dim: less: which projected dim to use (default: the first).
        aggregation: less / rds: ``max_subtask_mean``, ``mean`` or ``round_robin``.
        model: rds: the model whose hidden states are compared; s2l: the proxy trained without
            ``trajectories``; training: the model trained on each selection (unless
            ``train_settings.model_name_or_path``).
        trajectories: s2l: a loss-trajectory store of the pool.
        n_clusters: s2l: number of k-means clusters.
        stratify_by_source: s2l: sample each source separately.
        max_length: truncation length in tokens (rds, S2L proxy, training).
        proxy: s2l: the proxy's training settings.
        train: train on each selection and evaluate on ``eval`` (off by default).
        eval: the target task's held-out examples (with ``train``).
        train_settings: training settings (with ``train``).
        trainer: extra Trainer arguments (S2L proxy, training; rds: the device).
        selection_dirs: selections made elsewhere, ``{method: dir}``, used instead of running those methods.
        metrics: results already computed, ``{method: {"target_loss": ..., ...}}``; those methods are not trained.
        plot: write ``comparison.png``.
        overwrite: redo selections, proxies and trainings made with other settings instead of refusing.

    Returns:
        The comparison (the content of ``comparison.json``, absolute file paths), printed as a table.
    """
    request = SelectionRequest(
        pool=pool, targets=targets or (), fraction=fraction, count=count, seed=seed, pool_store=pool_store,
        target_store=target_store, dim=dim, aggregation=aggregation, model=model, trajectories=trajectories,
        n_clusters=n_clusters, stratify_by_source=stratify_by_source, max_length=max_length, trainer=trainer,
    )
    shares = ShareSettings(target_sources=target_sources, target_source_regex=target_source_regex, target_form=target_form, group_by_regex=group_by_regex,
                           top_sources=top_sources)
    settings = (train_settings or TrainSettings()) if train else None
    return Comparison(run_comparison(request, methods, output, shares=shares, proxy=proxy, train=settings,
                                     eval_files=eval, selection_dirs=selection_dirs, metrics=metrics, plot=plot,
                                     overwrite=overwrite))


def compare_methods(pool: Sequence[str] | str, targets: Sequence[str] | str | None, methods: Sequence[str],
                    output: str | os.PathLike, eval_files: Sequence[str] | str | None = None, **options: Any) -> Comparison:
    """:func:`compare` with the pool, targets, methods and output as positional arguments (and ``eval_files`` for ``eval``)."""
    return compare(pool=pool, targets=targets, methods=methods, output=str(output), eval=eval_files, **options)


__all__ = ["FILES", "compare", "compare_methods", "print_comparison", "run_comparison"]
