"""Run any registered selection method and write its selection directory.

A request goes through three steps, every check before any compute:

1. :func:`prepare`: the method's flags are given (its ``needs``), the records are read,
   the budget is resolved and the method's input files are opened and checked;
2. :func:`plan`: an existing selection in the output directory is reused when it was made
   the same way (:func:`~lightning_less.selection.registry.stale_reason`) and refused
   otherwise, unless ``overwrite``;
3. :func:`execute`: the method selects and :func:`~lightning_less.selection.outputs.write_selection`
   writes the directory, the same way for every method.

:func:`run_selection` does all three. The ``select`` and ``compare`` commands
(:mod:`lightning_less.recipes.select`, :mod:`lightning_less.recipes.compare`) call the steps
themselves, so that they can check every method before running any and train the S2L
proxy when only a model is given.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from lightning.pytorch.utilities import rank_zero_info

from lightning_less.data.records import Record, read_records
from lightning_less.data.subtasks import check_target_subtasks
from lightning_less.errors import InputError
from lightning_less.selection.budget import budget_info
from lightning_less.selection.outputs import MANIFEST_FILE, StaleSelectionError, write_selection
from lightning_less.selection.registry import (
    DEFAULT_FRACTION,
    Inputs,
    SelectionMethod,
    SelectionRequest,
    check_needs,
    decisive,
    get_method,
    stale_reason,
)


def request_budget(request: SelectionRequest, n_pool: int, default_fraction: float = DEFAULT_FRACTION) -> dict[str, Any]:
    """The budget entry ``{"fraction", "count", "k"}`` of ``request`` on a pool of ``n_pool`` (``default_fraction`` when none is given)."""
    fraction, count = request.fraction, request.count
    if fraction is None and count is None:
        fraction = default_fraction
    try:
        return budget_info(n_pool, fraction, count)
    except ValueError as err:
        raise InputError(f"--{'count' if count is not None else 'fraction'}: {err}") from None


def resolve_budget_of(method: SelectionMethod, request: SelectionRequest, n_pool: int) -> dict[str, Any]:
    """The budget of ``method`` (its own default when none is given); a whole-pool method refuses any other."""
    budget = request_budget(request, n_pool, method.default_fraction)
    if method.whole_pool and budget["k"] != n_pool:
        raise InputError(f"method {method.name!r} takes the whole pool: leave --fraction and --count unset "
                         f"(got a budget of {budget['k']} of {n_pool})")
    return budget


def prepare(method: str, request: SelectionRequest, *, later: Sequence[str] = (),
            pool: list[Record] | None = None, targets: list[Record] | None = None) -> Inputs:
    """Check and load everything ``method`` needs for ``request``, computing nothing.

    Args:
        method: the method's name.
        request: the request.
        later: inputs made before the method runs (the S2L proxy's ``trajectories``): they
            count as given, and the method's files are not loaded yet (``inputs.loaded`` is ``None``).
        pool: the pool records, when already read.
        targets: the target records, when already read.

    Returns:
        The :class:`~lightning_less.selection.registry.Inputs`.
    """
    spec = get_method(method)
    check_needs(spec, request, later)
    pool = read_records(list(request.pool)) if pool is None else pool
    if targets is None:
        targets = read_records(list(request.targets)) if request.targets else []
    check_target_subtasks(targets)
    inputs = Inputs(spec, request, pool, targets, resolve_budget_of(spec, request, len(pool)))
    if not set(later) & set(spec.needs):
        inputs.loaded = spec.load(inputs)
    return inputs


@dataclass
class SelectionPlan:
    """What :func:`execute` will do: reuse ``output`` or write (``overwrite``: replace) a selection there."""

    inputs: Inputs
    output: Path
    reuse: bool
    overwrite: bool


def plan(inputs: Inputs, output: str | os.PathLike, overwrite: bool = False) -> SelectionPlan:
    """Reuse an existing selection made the same way; refuse one made otherwise unless ``overwrite``.

    Raises:
        StaleSelectionError: ``output`` holds a selection made otherwise and ``overwrite`` is False;
            the message says what differs.
    """
    output = Path(output)
    manifest_path = output / MANIFEST_FILE
    if not manifest_path.is_file():
        return SelectionPlan(inputs, output, reuse=False, overwrite=overwrite)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        manifest = {}  # unreadable: never reused, replaced only with overwrite
    reason = stale_reason(manifest, inputs) if manifest else f"{MANIFEST_FILE} cannot be read"
    if reason is None:
        return SelectionPlan(inputs, output, reuse=True, overwrite=False)
    if not overwrite:
        raise StaleSelectionError(f"{output} cannot be reused: {reason}; pass overwrite=True (--overwrite true) "
                                  "or choose another output")
    return SelectionPlan(inputs, output, reuse=False, overwrite=True)


def execute(selection: SelectionPlan) -> Path:
    """Select and write the selection directory (or reuse it); returns the directory."""
    inputs, output = selection.inputs, selection.output
    name = inputs.method.name
    if selection.reuse:
        rank_zero_info(f"[skip] {name} selection: {output} was made the same way")
        return output
    if inputs.loaded is None:
        raise RuntimeError(f"the {name} inputs were prepared with inputs still to be made; prepare them again")
    rank_zero_info(f"{name}: selecting {inputs.k} of {len(inputs.pool)} pool examples -> {output}")
    result = inputs.method.select(inputs)
    recorded = {"targets": inputs.target_fingerprint} if inputs.request.targets else {}
    recorded.update(inputs.method.recorded_inputs(inputs))
    return write_selection(output, inputs.pool, result.selected, result.scores, name, inputs.budget,
                           seed=inputs.request.seed, inputs=recorded, params={**result.params, "request": decisive(inputs)},
                           per_subtask=result.per_subtask, overwrite=selection.overwrite)


def run_selection(
    method: str,
    pool_files: Sequence[str] | str,
    target_files: Sequence[str] | str | None,
    output: str | os.PathLike,
    fraction: float | None = None,
    count: int | None = None,
    seed: int = 0,
    pool_store: str | os.PathLike | None = None,
    target_store: str | os.PathLike | None = None,
    dim: int | None = None,
    aggregation: str = "max_subtask_mean",
    model: str | None = None,
    trajectories: str | os.PathLike | None = None,
    n_clusters: int = 100,
    stratify_by_source: bool = False,
    max_length: int = 2048,
    trainer: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Select a budget of the pool with ``method`` and write the selection directory ``output``.

    The budget is ``fraction`` of the pool or ``count`` examples (default: 5%, the whole
    pool for ``full``). The options are those of
    :class:`~lightning_less.selection.registry.SelectionRequest`; each method reads its own
    and refuses, before any compute, a missing or unusable input with an error naming its flag.

    An existing selection made the same way (method, budget, unchanged pool, and the
    method's deciding options) is reused; any other is refused unless ``overwrite``.
    S2L needs ``trajectories`` here: to train a proxy from ``model`` first, use
    :func:`lightning_less.recipes.select.select`.

    Returns:
        ``output`` as a :class:`~pathlib.Path`.
    """
    request = SelectionRequest(
        pool=pool_files, targets=target_files or (), fraction=fraction, count=count, seed=seed, pool_store=pool_store,
        target_store=target_store, dim=dim, aggregation=aggregation, model=model, trajectories=trajectories,
        n_clusters=n_clusters, stratify_by_source=stratify_by_source, max_length=max_length, trainer=trainer,
    )
    return execute(plan(prepare(method, request), output, overwrite))
