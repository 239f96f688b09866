"""S2L (SmallToLarge, Yang et al. 2024): k-means on a proxy's loss trajectories, then balanced sampling (docs/algorithms.md).

The trajectories come from a trajectory store (the trajectory pass, or the proxy the
``select`` / ``compare`` commands train when given only a model). Examples with no
defined loss (NaN rows, the store's ``excluded_indices``) are left out and reported.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from lightning_less.errors import IncompatibleError, InputError, MissingInputError
from lightning_less.selection.registry import Inputs, SelectionMethod, register
from lightning_less.selection.result import SelectionResult
from lightning_less.selection.s2l import s2l_select
from lightning_less.stores.provenance import check_files
from lightning_less.stores.trajectory import TrajectoryStore


def select_s2l(
    trajectories: Any,
    k: int,
    n_clusters: int = 100,
    n_iter: int = 20,
    seed: int = 0,
    sources: Sequence[str] | None = None,
    backend: str = "faiss",
) -> SelectionResult:
    """S2L on ``[n, T]`` trajectories: k-means per stratum, balanced sampling; indices ascending."""
    selected, info = s2l_select(trajectories, k, n_clusters, n_iter, seed, sources, backend)
    params = {
        "n_clusters": n_clusters,
        "n_iter": n_iter,
        "kmeans_backend": backend,
        "stratified_by_source": sources is not None,
        "info": info,
    }
    return SelectionResult(selected, None, None, params)


@register
class S2L(SelectionMethod):
    """Pool coverage: clusters of similar training dynamics, sampled evenly (blind to the targets)."""

    name = "s2l"
    description = "SmallToLarge: k-means on a proxy's loss trajectories, a balanced sample of the clusters"
    needs = ("trajectories",)
    deciding = ("trajectories", "n_clusters", "stratify_by_source", "seed")
    hint = "; or give --model to train a proxy on the pool first (the select and compare commands do)"

    def load(self, inputs: Inputs) -> dict[str, Any]:
        path = inputs.request.trajectories
        try:
            losses, manifest = TrajectoryStore(path).read()
        except FileNotFoundError as err:
            raise MissingInputError(f"--trajectories: {err}") from None
        except (ValueError, RuntimeError) as err:
            raise InputError(f"--trajectories: {err}") from None
        check_files(manifest, inputs.request.pool, f"--trajectories {path}", "--pool")
        if manifest.get("n_examples") != len(inputs.pool):
            raise IncompatibleError(f"--trajectories {path} has {manifest.get('n_examples')} rows but --pool holds "
                                    f"{len(inputs.pool)} records: it was recorded on other data")
        defined = int(np.isfinite(losses).all(axis=1).sum())
        if inputs.k > defined:
            raise InputError(f"the budget ({inputs.k}) exceeds the {defined} pool examples with a defined loss in "
                             f"--trajectories {path} ({len(losses) - defined} have none): lower --fraction or --count")
        return {"losses": losses}

    def excluded(self, inputs: Inputs) -> list[int]:
        """The rows without a defined loss (NaN: no response token when the trajectories were recorded)."""
        return np.flatnonzero(~np.isfinite(inputs.loaded["losses"]).all(axis=1)).tolist()

    def select(self, inputs: Inputs) -> SelectionResult:
        request = inputs.request
        sources = [r.source for r in inputs.pool] if request.stratify_by_source else None
        losses = np.array(inputs.loaded["losses"], dtype=np.float64)
        losses[inputs.excluded] = np.nan  # S2L leaves out the rows without a defined loss
        return select_s2l(losses, inputs.k, n_clusters=min(request.n_clusters, len(inputs.pool)),
                          seed=request.seed, sources=sources)

    def recorded_inputs(self, inputs: Inputs) -> dict[str, Any]:
        return {"trajectories": inputs.request.trajectories}
