"""Run any selection method (LESS, RDS, S2L, random, BM25, DSIR, full) and write its selection directory.

One place that loads what each method needs (records, hidden states, loss trajectories)
and calls the shared selector interface (:mod:`lightning_less.selection.methods`), so
every method's output is written by the same :func:`write_selection`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from lightning_less.data.records import files_fingerprint, read_records
from lightning_less.passes.hidden_states import last_token_hidden_states
from lightning_less.recipes.s2l_proxy import s2l_trajectories
from lightning_less.stores.trajectory import TrajectoryStore, check_trajectory_data



METHODS = ("less", "rds", "s2l", "random", "bm25", "dsir", "full")


def less_inputs(pool_store_dir: str | Path, target_store_dir: str | Path, n_targets: int, dim: int | None = None):
    """Open and cross-check a pool (``adam``) and a target (``sgd``) store; return what LESS scoring needs."""
    from lightning_less.stores.datastore import GradientDatastore

    pool_store = GradientDatastore.open(pool_store_dir)
    target_store = GradientDatastore.open(target_store_dir)
    pool_store.check_compatible(target_store)
    kinds = (pool_store.manifest["feature_kind"], target_store.manifest["feature_kind"])
    if kinds != ("adam", "sgd"):
        raise ValueError(f"expected an adam pool store and an sgd target store, got {kinds[0]} ({pool_store_dir}) "
                         f"and {kinds[1]} ({target_store_dir})")
    if target_store.n_examples != n_targets:
        raise ValueError(f"{target_store_dir} has {target_store.n_examples} rows but the target files hold {n_targets} records")
    dim = dim or pool_store.dims[0]
    if dim not in pool_store.dims:
        raise ValueError(f"dim {dim} is not in the stores' dims {pool_store.dims}")
    return pool_store, target_store, dim


def run_selection(
    method: str,
    pool_files: Sequence[str],
    target_files: Sequence[str] | None,
    output: str | Path,
    fraction: float | None = None,
    count: int | None = None,
    seed: int = 0,
    pool_store: str | Path | None = None,
    target_store: str | Path | None = None,
    dim: int | None = None,
    aggregation: str = "max_subtask_mean",
    model: str | None = None,
    trajectories: str | Path | None = None,
    n_clusters: int = 100,
    stratify_by_source: bool = False,
    max_length: int = 2048,
    trainer: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Select a budget of the pool with ``method`` and write the selection directory ``output``.

    The budget is ``fraction`` of the pool or ``count`` examples (default: 5%, the whole
    pool for ``full``).

    An existing selection made the same way (method, seed, budget, unchanged pool) is
    reused; any other existing selection is refused unless ``overwrite``.
    """
    from lightning_less.selection.budget import budget_info, resolve_budget
    from lightning_less.selection.methods import SELECTORS, SelectionResult
    from lightning_less.selection.outputs import read_selection, write_selection

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: expected one of {METHODS}")
    if fraction is None and count is None:
        fraction = 1.0 if method == "full" else 0.05  # LESS's default budget
    pool = read_records(pool_files)
    targets = read_records(target_files) if target_files else []
    if method in ("less", "rds", "bm25", "dsir") and not targets:
        raise ValueError(f"method {method!r} needs target examples (targets=...)")
    k = resolve_budget(len(pool), fraction=fraction, count=count)
    output = Path(output)
    # Everything that determines the selection besides the pool (checked by hash) and the budget.
    request = {"method": method, "seed": seed, "k": k, "targets": files_fingerprint(target_files) if target_files else [],
               "pool_store": str(pool_store) if pool_store else None, "target_store": str(target_store) if target_store else None,
               "dim": dim, "aggregation": aggregation, "model": model, "trajectories": str(trajectories) if trajectories else None,
               "n_clusters": n_clusters, "stratify_by_source": stratify_by_source, "max_length": max_length}
    request = json.loads(json.dumps(request))
    if (output / "manifest.json").exists() and not overwrite:
        sel = read_selection(output, pool)  # raises if the pool changed since
        if sel.manifest.get("params", {}).get("request") == request:
            rank_zero_info(f"[skip] {method} selection: {output} exists")
            return output
        raise FileExistsError(f"{output} holds a selection made differently ({sel.manifest['method']}, "
                              f"k={len(sel.selected)}); pass overwrite=True or choose another output")
    rank_zero_info(f"{method}: selecting {k} of {len(pool)} pool examples -> {output}")
    subtasks = [t.subtask or t.source for t in targets]
    inputs: dict = {"targets": files_fingerprint(target_files)} if target_files else {}
    params: dict = {}
    if method == "less":
        if pool_store is None or target_store is None:
            raise ValueError("method 'less' needs pool_store and target_store (gradient datastores)")
        pstore, tstore, dim = less_inputs(pool_store, target_store, len(targets), dim)
        excluded = pstore.manifest.get("excluded_indices", [])
        if excluded:
            raise ValueError(f"{len(excluded)} pool examples of {pool_store} have no response token after truncation "
                             f"(e.g. indices {excluded[:5]}); raise max_length or remove them from the pool")
        keep_t = np.setdiff1d(np.arange(len(targets)), tstore.manifest.get("excluded_indices", []))
        result = SELECTORS["less"](
            [pstore.features(s, dim) for s in pstore.snapshots],
            [np.asarray(tstore.features(s, dim))[keep_t] for s in tstore.snapshots],
            pstore.manifest["snapshot_lrs"], [subtasks[i] for i in keep_t], k, aggregation=aggregation,
        )
        inputs.update({"pool_store": str(pool_store), "target_store": str(target_store), "dim": dim})
    elif method == "random":
        result = SELECTORS["random"](len(pool), k, seed=seed)
    elif method == "full":
        if k != len(pool):
            raise ValueError("method 'full' takes the whole pool: use fraction=1.0")
        result = SelectionResult(np.arange(len(pool), dtype=np.int64), None, None, {})
    elif method == "bm25":
        result = SELECTORS["bm25"](pool, targets, k)
    elif method == "dsir":
        result = SELECTORS["dsir"](pool, targets, k, seed=seed)
    elif method == "rds":
        if model is None:
            raise ValueError("method 'rds' needs model (the model whose hidden states are compared)")
        pool_h = last_token_hidden_states(model, pool_files, max_length)
        target_h = last_token_hidden_states(model, target_files, max_length)
        result = SELECTORS["rds"](pool_h, target_h, subtasks, k, aggregation=aggregation)
        params["model"] = model
    else:  # s2l
        if trajectories is None:
            if model is None:
                raise ValueError("method 's2l' needs trajectories (a trajectory store) or model (a proxy to train)")
            trajectories = output.parent / f"{output.name}_proxy"
            traj = s2l_trajectories(model, pool_files, Path(trajectories), max_length, seed, trainer=trainer)
        else:
            traj, manifest = TrajectoryStore(trajectories).read()  # NaN rows (no response token) are excluded below
            try:
                check_trajectory_data(manifest, pool_files, len(pool))
            except ValueError as e:
                raise ValueError(f"{trajectories}: {e}") from None
        sources = [r.source for r in pool] if stratify_by_source else None
        result = SELECTORS["s2l"](traj, k, n_clusters=min(n_clusters, len(pool)), seed=seed, sources=sources)
        inputs["trajectories"] = str(trajectories)
    write_selection(output, pool, result.selected, result.scores, method, budget_info(len(pool), fraction, count),
                    seed=seed, inputs=inputs, params={**result.params, **params, "request": request}, per_subtask=result.per_subtask,
                    overwrite=overwrite)
    return output
