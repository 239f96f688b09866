"""LESS (Xia et al. 2024): LR-weighted cosine of the pool's Adam gradient features to the targets' SGD features.

Step 3 of LESS (docs/algorithms.md): per-subtask mean over the target examples, then
the max over subtasks (or the mean, or round-robin), top-k. The pool and target
features come from two gradient datastores made with the same snapshots and projector.
Target examples that had no response token left after truncation have no features
(the target store's ``excluded_indices``) and are left out; pool examples without
features are refused, since they could be neither scored nor silently dropped.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from lightning_less.errors import IncompatibleError, InputError, MissingInputError
from lightning_less.selection.registry import Inputs, SelectionMethod, register
from lightning_less.selection.result import SelectionResult, from_influence
from lightning_less.selection.scoring import influence_scores
from lightning_less.stores.datastore import GradientDatastore


def select_less(
    pool_features: Sequence[Any],
    target_features: Sequence[Any],
    snapshot_lrs: Sequence[float],
    target_subtasks: Sequence[str],
    k: int,
    aggregation: str = "max_subtask_mean",
    block_size: int | None = None,
    device: str | torch.device = "cpu",
) -> SelectionResult:
    """LESS: LR-weighted cosine over snapshots, subtask aggregation, top-k (docs/algorithms.md)."""
    result = influence_scores(
        pool_features, target_features, snapshot_lrs, target_subtasks, aggregation, block_size, device
    )
    return from_influence(result, k, {"snapshot_lrs": [float(x) for x in snapshot_lrs]})


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
        try:
            pool_store.check_compatible(target_store)
        except ValueError as err:
            raise IncompatibleError(f"--pool_store and --target_store: {err}") from None
        kinds = (pool_store.manifest.get("feature_kind"), target_store.manifest.get("feature_kind"))
        if kinds != ("adam", "sgd"):
            raise InputError(f"expected an adam pool store and an sgd target store, got {kinds[0]} (--pool_store "
                             f"{pool_store.path}) and {kinds[1]} (--target_store {target_store.path})")
        for store, flag, records, what in ((pool_store, "pool_store", inputs.pool, "--pool"),
                                           (target_store, "target_store", inputs.targets, "--targets")):
            if store.n_examples != len(records):
                raise IncompatibleError(f"--{flag} {store.path} has {store.n_examples} rows but {what} holds "
                                        f"{len(records)} records: it was computed on other data")
        dim = request.dim or pool_store.dims[0]
        if dim not in pool_store.dims:
            raise InputError(f"--dim {dim} is not in the stores' dims {pool_store.dims}")
        excluded = pool_store.manifest.get("excluded_indices", [])
        if excluded:
            raise InputError(f"{len(excluded)} pool examples of --pool_store {pool_store.path} have no response token "
                             f"after truncation (e.g. indices {excluded[:5]}); raise max_length or remove them from the pool")
        keep = np.setdiff1d(np.arange(len(inputs.targets)), target_store.manifest.get("excluded_indices", []))
        if keep.size == 0:
            raise InputError(f"no target example of --target_store {target_store.path} has a response token left "
                             "after truncation: raise max_length")
        return {"stores": (pool_store, target_store), "dim": int(dim), "kept_targets": keep}

    def select(self, inputs: Inputs) -> SelectionResult:
        pool_store, target_store = inputs.loaded["stores"]
        dim, keep = inputs.loaded["dim"], inputs.loaded["kept_targets"]
        subtasks = inputs.target_subtasks
        return select_less(
            [pool_store.features(s, dim) for s in pool_store.snapshots],
            [np.asarray(target_store.features(s, dim))[keep] for s in target_store.snapshots],
            pool_store.manifest["snapshot_lrs"], [subtasks[i] for i in keep], inputs.k,
            aggregation=inputs.request.aggregation,
        )

    def recorded_inputs(self, inputs: Inputs) -> dict[str, Any]:
        return {"pool_store": inputs.request.pool_store, "target_store": inputs.request.target_store,
                "dim": inputs.loaded["dim"]}
