"""LESS (Xia et al. 2024): LR-weighted cosine of the pool's Adam gradient features to the targets' SGD features.

Step 3 of LESS (docs/algorithms.md): per-subtask mean over the target examples, then
the max over subtasks (or the mean, or round-robin), top-k. The pool and target
features come from two gradient datastores, checked before anything is scored
(:func:`check_stores`): the same projector and dims, byte-identical snapshots, the same
base model and tokenization, and each store computed on the data it is used with (the
``--pool`` / ``--targets`` files, or any data given to :func:`select_from_stores`).
Pool examples that had no response token left after truncation have no features (the
pool store's ``excluded_indices``): they are not scored (their score is NaN) and never
selected. Target examples without one are refused, naming them: a target without a
response gives no signal, so it is a mistake in the target set.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch

from lightning_less.errors import IncompatibleError, InputError, MissingInputError
from lightning_less.selection.registry import Inputs, SelectionMethod, register
from lightning_less.selection.result import SelectionResult, from_influence
from lightning_less.selection.scoring import influence_scores
from lightning_less.stores.datastore import GradientDatastore
from lightning_less.stores.provenance import check_data, check_files, check_same_snapshots, check_same_tokenization


def select_less(
    pool_features: Sequence[Any],
    target_features: Sequence[Any],
    snapshot_lrs: Sequence[float],
    target_subtasks: Sequence[str],
    k: int,
    aggregation: str = "max_subtask_mean",
    block_size: int | None = None,
    device: str | torch.device = "cpu",
    distributed: bool = False,
    exclude: Sequence[int] | np.ndarray | None = None,
) -> SelectionResult:
    """LESS: LR-weighted cosine over snapshots, subtask aggregation, top-k (docs/algorithms.md).

    ``distributed``: every rank of the initialised process group calls this and scores a
    share of the pool's rows; all get the whole selection (docs/scaling.md, "Past one machine").
    ``exclude``: pool rows never scored nor selected (examples without a response token).
    """
    result = influence_scores(
        pool_features, target_features, snapshot_lrs, target_subtasks, aggregation, block_size, device,
        distributed=distributed, exclude=exclude,
    )
    eligible = None if exclude is None or not len(exclude) else np.setdiff1d(np.arange(result.score.shape[0]), exclude)
    return from_influence(result, k, {"snapshot_lrs": [float(x) for x in snapshot_lrs]}, eligible)


def open_store(path: str, flag: str) -> GradientDatastore:
    """Open a finished gradient datastore given as ``--<flag>``."""
    try:
        store = GradientDatastore.open(path)
    except FileNotFoundError:
        raise MissingInputError(f"--{flag} {path} is not a gradient datastore (no manifest.json): compute its "
                                "gradient features first (lightning-less pipeline, or predict with GradientFeatureModule)") from None
    except ValueError as err:
        raise InputError(f"--{flag}: {err}") from None
    if not store.is_complete():
        raise InputError(f"--{flag} {path} is an unfinished gradient datastore: run its gradient pass again to complete it")
    return store


def check_stores(pool_store: GradientDatastore, target_store: GradientDatastore, pool_label: str, target_label: str) -> None:
    """Refuse a pool store and a target store that cannot be scored together, naming both and what differs.

    Same projector, dims and snapshot names; an ``adam`` pool and an ``sgd`` target store;
    byte-identical snapshots and the same base model; the same tokenization.
    """
    try:
        pool_store.check_compatible(target_store)
    except ValueError as err:
        raise IncompatibleError(f"{pool_label} and {target_label}: {err}") from None
    kinds = (pool_store.manifest.get("feature_kind"), target_store.manifest.get("feature_kind"))
    if kinds != ("adam", "sgd"):
        raise InputError(f"expected an adam pool store and an sgd target store, got {kinds[0]} ({pool_label}) and "
                         f"{kinds[1]} ({target_label})")
    check_same_snapshots(pool_store.manifest, target_store.manifest, pool_label, target_label)
    check_same_tokenization(pool_store.manifest, target_store.manifest, pool_label, target_label)


def _check_data(store: GradientDatastore, data: Any, label: str, data_label: str) -> None:
    """``data``: jsonl files (checked by sha256) or any data source a pass takes (checked by its fingerprint)."""
    if isinstance(data, (str, os.PathLike)) or (isinstance(data, (list, tuple)) and data
                                                 and all(isinstance(f, (str, os.PathLike)) for f in data)):
        check_files(store.manifest, [data] if isinstance(data, (str, os.PathLike)) else list(data), label, data_label)
    else:
        check_data(store.manifest, data, label, data_label)


def _usable_rows(target_store: GradientDatastore, target_label: str, targets: Sequence[Any] | None = None) -> np.ndarray:
    """The target rows (all of them): a target without features (no response token left) is refused, named."""
    excluded = [int(i) for i in target_store.manifest.get("excluded_indices", [])]
    if excluded:
        named = (f"ids {', '.join(targets[i].id for i in excluded[:5])}" if targets is not None
                 else f"indices {excluded[:5]}") + (f" and {len(excluded) - 5} more" if len(excluded) > 5 else "")
        raise InputError(f"{len(excluded)} target examples of {target_label} keep no response token after truncation "
                         f"({named}): a target without a response gives no signal; raise max_length, or shorten or "
                         "remove them")
    return np.arange(target_store.n_examples)


def _dim_of(pool_store: GradientDatastore, dim: int | None) -> int:
    dim = dim or pool_store.dims[0]
    if dim not in pool_store.dims:
        raise InputError(f"--dim {dim} is not in the stores' dims {pool_store.dims}")
    return int(dim)


def _scored(pool_store: GradientDatastore, target_store: GradientDatastore, dim: int, keep: np.ndarray,
            subtasks: Sequence[str], k: int, aggregation: str, distributed: bool = False,
            exclude: Sequence[int] | np.ndarray | None = None) -> SelectionResult:
    """LESS on the stores; ``exclude`` (default: the pool store's ``excluded_indices``) is never scored nor selected."""
    exclude = pool_store.manifest.get("excluded_indices", []) if exclude is None else exclude
    return select_less([pool_store.features(s, dim) for s in pool_store.snapshots],
                       [np.asarray(target_store.features(s, dim))[keep] for s in target_store.snapshots],
                       pool_store.manifest["snapshot_lrs"], [subtasks[i] for i in keep], k, aggregation=aggregation,
                       distributed=distributed, exclude=exclude)


def select_from_stores(
    pool_store: str | os.PathLike | GradientDatastore,
    target_store: str | os.PathLike | GradientDatastore,
    k: int,
    target_subtasks: Sequence[str],
    *,
    pool_data: Any,
    target_data: Any,
    dim: int | None = None,
    aggregation: str = "max_subtask_mean",
    distributed: bool = False,
) -> SelectionResult:
    """LESS on two finished gradient stores, each checked against the data it is used with (no selection directory).

    For data of your own project (any ``DataLoader`` or ``LightningDataModule`` the gradient
    pass ran over), where ``run_selection`` needs jsonl files.

    Args:
        pool_store: the pool's ``adam`` store.
        target_store: the targets' ``sgd`` store.
        k: how many pool examples to select.
        target_subtasks: one subtask label per target row.
        pool_data: the pool: its jsonl files, or the ``DataLoader`` / ``LightningDataModule`` /
            dataset the pool store was computed on (identified again and compared).
        target_data: the targets, as ``pool_data``.
        dim: which projected dim to use (default: the stores' first).
        aggregation: ``max_subtask_mean``, ``mean`` or ``round_robin``.
        distributed: called on every rank of an initialised process group: each scores a share
            of the rows, every rank returns the whole selection (equal to one process).

    Returns:
        The :class:`~lightning_less.selection.result.SelectionResult`: ``selected`` are pool rows in rank order,
        never a row of the pool store's ``excluded_indices`` (no response token; score NaN).

    Raises:
        IncompatibleError: stores that cannot be scored together, or computed on other data.
        InputError: target rows without a response token, or ``k`` above the pool rows left with one.
    """
    stores = [s if isinstance(s, GradientDatastore) else open_store(os.fspath(s), flag)
              for s, flag in ((pool_store, "pool_store"), (target_store, "target_store"))]
    (pool, targets), labels = stores, [f"the pool store {stores[0].path}", f"the target store {stores[1].path}"]
    check_stores(pool, targets, *labels)
    _check_data(pool, pool_data, labels[0], "the pool data given")
    _check_data(targets, target_data, labels[1], "the target data given")
    if len(target_subtasks) != targets.n_examples:
        raise InputError(f"{len(target_subtasks)} target subtasks for the {targets.n_examples} rows of {labels[1]}")
    usable = pool.n_examples - len(pool.manifest.get("excluded_indices", []))
    if k > usable:
        raise InputError(f"k={k} exceeds the {usable} rows of {labels[0]} left with a response token")
    return _scored(pool, targets, _dim_of(pool, dim), _usable_rows(targets, labels[1]), target_subtasks, k,
                   aggregation, distributed)


@register
class Less(SelectionMethod):
    """Gradient influence on the targets, from two gradient datastores (pool: adam, targets: sgd)."""

    name = "less"
    description = ("gradient influence: LR-weighted cosine of the pool's Adam to the targets' SGD gradient features, "
                   "mean per target subtask, max over subtasks, top-k")
    needs = ("targets", "pool_store", "target_store")
    deciding = ("targets", "pool_store", "target_store", "dim", "aggregation")

    def load(self, inputs: Inputs) -> dict[str, Any]:
        request = inputs.request
        pool_store, target_store = open_store(request.pool_store, "pool_store"), open_store(request.target_store, "target_store")
        labels = (f"--pool_store {pool_store.path}", f"--target_store {target_store.path}")
        check_stores(pool_store, target_store, *labels)
        for store, label, records, what, files in ((pool_store, labels[0], inputs.pool, "--pool", request.pool),
                                                   (target_store, labels[1], inputs.targets, "--targets", request.targets)):
            if store.n_examples != len(records):
                raise IncompatibleError(f"{label} has {store.n_examples} rows but {what} holds "
                                        f"{len(records)} records: it was computed on other data")
            check_files(store.manifest, files, label, what)
        dim = _dim_of(pool_store, request.dim)
        return {"stores": (pool_store, target_store), "dim": dim,
                "kept_targets": _usable_rows(target_store, labels[1], inputs.targets)}

    def excluded(self, inputs: Inputs) -> list[int]:
        return inputs.loaded["stores"][0].manifest.get("excluded_indices", [])

    def select(self, inputs: Inputs) -> SelectionResult:
        pool_store, target_store = inputs.loaded["stores"]
        return _scored(pool_store, target_store, inputs.loaded["dim"], inputs.loaded["kept_targets"],
                       inputs.target_subtasks, inputs.k, inputs.request.aggregation, exclude=inputs.excluded)

    def recorded_inputs(self, inputs: Inputs) -> dict[str, Any]:
        return {"pool_store": inputs.request.pool_store, "target_store": inputs.request.target_store,
                "dim": inputs.loaded["dim"]}
