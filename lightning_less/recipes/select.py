"""``lightning-less select``: one method, one selection directory; the S2L proxy is trained first when needed.

The selection layer (:mod:`lightning_less.selection.runner`) takes only inputs that
exist. Here, S2L given a ``model`` and no ``trajectories`` first trains a proxy on the
pool (:func:`~lightning_less.recipes.s2l_proxy.s2l_trajectories`, into
``<output>_proxy``, with the ``trainer`` arguments, so it can run on a GPU) and selects
with its trajectories. ``compare`` plans and runs its selections with the same two
functions, :func:`plan_step` and :func:`run_step`, so both commands make the same
selection for the same request.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lightning_less.data.records import Record
from lightning_less.errors import StaleOutputError
from lightning_less.recipes.s2l_proxy import ProxySettings, proxy_dir, proxy_stale_reason, s2l_trajectories
from lightning_less.selection.registry import SelectionRequest, get_method
from lightning_less.selection.runner import SelectionPlan, execute, plan, prepare


@dataclass
class SelectionStep:
    """One method's selection, checked and planned before anything is computed."""

    method: str
    request: SelectionRequest
    """The request; for a proxy, with ``trajectories`` pointing at the proxy's store."""
    plan: SelectionPlan
    proxy: Path | None
    """The S2L proxy's trajectory store to train first (``None``: every input exists)."""
    proxy_settings: ProxySettings
    overwrite: bool


def uses_proxy(method: str, request: SelectionRequest) -> bool:
    """Whether ``method`` needs trajectories that a proxy trained from ``request.model`` must provide."""
    return "trajectories" in get_method(method).needs and request.trajectories is None and request.model is not None


def plan_step(method: str, request: SelectionRequest, output: str | Path, *, proxy: ProxySettings | None = None,
              overwrite: bool = False, pool: list[Record] | None = None,
              targets: list[Record] | None = None) -> SelectionStep:
    """Check everything ``method`` needs and decide whether ``output`` is reused, computing nothing.

    Raises the :mod:`lightning_less.errors` class naming the flag or file at fault, and
    :class:`~lightning_less.errors.StaleOutputError` for a selection (or proxy) made otherwise
    unless ``overwrite``.
    """
    proxy = proxy or ProxySettings()
    output, store, later = Path(output), None, ()
    if uses_proxy(method, request):
        store = proxy_dir(output)
        reason = proxy_stale_reason(store, request.model, request.pool, request.max_length, request.seed, proxy)
        if reason is not None and not overwrite:
            raise StaleOutputError(f"{reason}; pass overwrite=True (--overwrite true) or choose another output")
        request = replace(request, trajectories=str(store))
        if reason is not None or not (store / "manifest.json").exists():
            later = ("trajectories",)  # made by the proxy, checked once it is trained
        else:
            store = None  # a proxy trained the same way: its trajectories are an existing input
    inputs = prepare(method, request, later=later, pool=pool, targets=targets)
    return SelectionStep(method, request, plan(inputs, output, overwrite), store if later else None, proxy, overwrite)


def run_step(step: SelectionStep) -> Path:
    """Train the proxy when the step needs one, then select (or reuse); returns the selection directory."""
    if step.proxy is None:
        return execute(step.plan)
    request, inputs = step.request, step.plan.inputs
    s2l_trajectories(request.model, list(request.pool), step.proxy, request.max_length, request.seed,
                     step.proxy_settings, trainer=request.trainer, overwrite=step.overwrite)
    ready = prepare(step.method, request, pool=inputs.pool, targets=inputs.targets)
    return execute(plan(ready, step.plan.output, step.overwrite))


def select(
    *,
    method: str,
    pool: list[str] | str,
    output: str,
    targets: list[str] | str | None = None,
    fraction: float | None = None,
    count: int | None = None,
    seed: int = 0,
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
    trainer: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Select a budget of the pool with one method and write a selection directory.

    Every method writes the same outputs: ``scores.csv``, ``selected.jsonl`` (input lines,
    byte for byte) and ``manifest.json``. Every input is checked before anything is
    computed. A selection made the same way already in ``output`` is reused; one made
    otherwise is refused unless ``overwrite``.

    Args:
        method: ``less``, ``rds``, ``s2l``, ``random``, ``bm25``, ``dsir`` or ``full``.
        pool: the pool's jsonl file(s) (one global selection over all of them).
        output: the selection directory.
        targets: target examples (jsonl with a ``subtask`` field); needed by less, rds, bm25, dsir.
        fraction: budget as a fraction of the pool (default 0.05, as LESS; ``full``: the whole pool).
        count: budget as a number of examples (instead of ``fraction``).
        seed: seed of the sampled methods (random, s2l) and of the S2L proxy.
        pool_store: less: the pool's ``adam`` gradient datastore.
        target_store: less: the targets' ``sgd`` gradient datastore.
        dim: less: which projected dim to use (default: the first).
        aggregation: less / rds: ``max_subtask_mean`` (default), ``mean`` or ``round_robin``.
        model: rds: the model whose hidden states are compared; s2l: the proxy trained on the
            pool when no ``trajectories`` are given (into ``<output>_proxy``).
        trajectories: s2l: a loss-trajectory store of the pool.
        n_clusters: s2l: number of k-means clusters.
        stratify_by_source: s2l: sample each source separately.
        max_length: truncation length in tokens (rds, S2L proxy).
        proxy: s2l: the proxy's training settings (with ``model``).
        trainer: extra Trainer arguments for the S2L proxy (e.g. ``{"accelerator": "gpu"}``);
            rds: ``accelerator`` picks the device of the hidden states.
        overwrite: replace a selection (and an S2L proxy) made with other settings.

    Returns:
        ``{"selection", "method", "k", "n_pool", "n_excluded", "reused"}``: the selection directory, the
        method, the number selected, the pool size, the pool examples left out for having no response
        token at ``max_length`` (known from ``model`` or the method's stores; never selected), and whether
        an existing selection was reused.
    """
    request = SelectionRequest(
        pool=pool, targets=targets or (), fraction=fraction, count=count, seed=seed, pool_store=pool_store,
        target_store=target_store, dim=dim, aggregation=aggregation, model=model, trajectories=trajectories,
        n_clusters=n_clusters, stratify_by_source=stratify_by_source, max_length=max_length, trainer=trainer,
    )
    step = plan_step(method, request, output, proxy=proxy, overwrite=overwrite)
    path = run_step(step)
    inputs = step.plan.inputs
    return {"selection": str(path), "method": method, "k": inputs.k, "n_pool": len(inputs.pool),
            "n_excluded": int(inputs.excluded.size), "reused": step.plan.reuse and step.proxy is None}
