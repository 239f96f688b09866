"""Run any registered selection method and write its selection directory.

A request goes through three steps, every check before any compute:

1. :func:`prepare`: the method's flags are given (its ``needs``), the records are read,
   the budget is resolved, the method's input files are opened and checked, and the pool
   examples without a response token are found (:func:`find_excluded`): never selected;
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

import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from lightning_less.data.formatting import encode_messages, has_response_token
from lightning_less.data.records import Record, read_records
from lightning_less.data.subtasks import check_target_subtasks
from lightning_less.errors import IncompatibleError, InputError
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


#: Why ``excluded`` pool examples are left out (the selection manifest's ``params.excluded.why``).
EXCLUDED_WHY = "no response token left after truncation to max_length: no training signal"


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


_NO_RESPONSE_CACHE: dict[tuple, np.ndarray] = {}


def records_without_response(records: Sequence[Record], tokenizer_name_or_path: str, max_length: int,
                             template: str = "tulu") -> np.ndarray:
    """The indices of ``records`` that keep no response token after truncation to ``max_length`` tokens.

    The rule the datasets apply (:func:`~lightning_less.data.formatting.has_response_token` on
    the encoded example): such an example carries no training signal and has no gradient or
    loss. Cached per records (files, size, modification time), tokenizer, length and template:
    ``compare`` asks once per method.
    """
    from lightning_less.models.loading import load_tokenizer

    files = sorted({r.path for r in records})
    key = (tuple((os.path.realpath(f), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files),
           len(records), tokenizer_name_or_path, max_length, template)
    if key not in _NO_RESPONSE_CACHE:
        try:
            tokenizer = load_tokenizer(tokenizer_name_or_path)
        except (OSError, ValueError) as err:
            raise InputError(f"--model {tokenizer_name_or_path}: cannot load its tokenizer, which finds the examples "
                             f"left without a response token ({' '.join(str(err).split())[:200]})") from None
        found = [r.index for r in records
                 if not has_response_token(encode_messages(r.messages, tokenizer, max_length=max_length, template=template)[1])]
        _NO_RESPONSE_CACHE[key] = np.asarray(found, dtype=np.int64)
    return _NO_RESPONSE_CACHE[key]


def describe_excluded(records: Sequence[Record], excluded: Sequence[int], shown: int = 5) -> str:
    """``"3 (ids a, b, c)"`` / ``"12 (ids a, b, c, d, e and 7 more)"``: how many, and the first ids."""
    excluded = [int(i) for i in excluded]
    ids = ", ".join(records[i].id for i in excluded[:shown])
    more = f" and {len(excluded) - shown} more" if len(excluded) > shown else ""
    return f"{len(excluded)} (ids {ids}{more})"


def excluded_record(records: Sequence[Record], excluded: Sequence[int], why: str, shown: int = 10) -> dict[str, Any]:
    """The manifests' / summaries' entry: ``{"count", "ids", "indices"}`` (the first ``shown``) and ``why``."""
    excluded = [int(i) for i in excluded]
    return {"count": len(excluded), "ids": [records[i].id for i in excluded[:shown]], "indices": excluded[:shown],
            "why": why}


def check_targets_have_responses(targets: Sequence[Record], tokenizer_name_or_path: str, max_length: int,
                                 flag: str = "--targets") -> None:
    """Refuse targets that keep no response token at ``max_length``: a target without signal is a mistake.

    Raises:
        InputError: naming how many, their ids, and what to do.
    """
    missing = records_without_response(targets, tokenizer_name_or_path, max_length)
    if missing.size:
        first = targets[int(missing[0])]
        raise InputError(f"{flag}: target examples without a response token after truncation to --max_length "
                         f"{max_length}: {describe_excluded(targets, missing)}, the first at {first.path}:{first.line}; "
                         "a target without a response gives no signal: raise --max_length, or shorten or remove them")


def find_excluded(inputs: Inputs) -> np.ndarray:
    """The pool indices never to select: those the method's inputs hold no example for (a store's
    ``excluded_indices``) and, when the request names a ``model``, those its tokenizer leaves without a
    response token at ``max_length``; the targets are checked the same way (an error)."""
    request = inputs.request
    found = [np.asarray(inputs.method.excluded(inputs) if inputs.loaded is not None else (), dtype=np.int64)]
    if request.model:
        found.append(records_without_response(inputs.pool, request.model, request.max_length))
        if inputs.targets:
            check_targets_have_responses(inputs.targets, request.model, request.max_length)
    excluded = np.unique(np.concatenate(found))
    if excluded.size and (excluded[0] < 0 or excluded[-1] >= len(inputs.pool)):
        raise IncompatibleError(f"the {inputs.method.name} inputs exclude pool rows outside the {len(inputs.pool)} "
                                "records of --pool: they were made on other data")
    return excluded


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
        The :class:`~lightning_less.selection.registry.Inputs`, with ``excluded`` set.

    Raises:
        InputError: besides the method's own refusals, a budget larger than the pool examples
            left with a response token, or targets without one.
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
    inputs.excluded = find_excluded(inputs)
    n_eligible = len(pool) - inputs.excluded.size
    if n_eligible == 0:
        raise InputError("no pool example keeps a response token after truncation: raise --max_length")
    if spec.whole_pool:
        inputs.budget = {**inputs.budget, "k": n_eligible}
    elif inputs.k > n_eligible:
        raise InputError(f"the budget ({inputs.k}) exceeds the {n_eligible} pool examples left with a response token; "
                         f"pool examples without one after truncation: {describe_excluded(pool, inputs.excluded)}; lower "
                         "--fraction or --count, or raise --max_length")
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
    params: dict[str, Any] = {}
    if inputs.excluded.size:
        rank_zero_info(f"{name}: pool examples without a response token after truncation, never selected: "
                       f"{describe_excluded(inputs.pool, inputs.excluded)} of {len(inputs.pool)}")
        params["excluded"] = excluded_record(inputs.pool, inputs.excluded, EXCLUDED_WHY)
    rank_zero_info(f"{name}: selecting {inputs.k} of {len(inputs.pool)} pool examples -> {output}")
    result = inputs.method.select(inputs)
    chosen_badly = np.intersect1d(np.asarray(result.selected, dtype=np.int64), inputs.excluded)
    if chosen_badly.size:  # a method that ignores inputs.eligible: a bug, never a selection
        raise RuntimeError(f"method {name!r} selected pool examples without a response token: {chosen_badly[:10].tolist()}")
    recorded = {"targets": inputs.target_fingerprint} if inputs.request.targets else {}
    recorded.update(inputs.method.recorded_inputs(inputs))
    return write_selection(output, inputs.pool, result.selected, result.scores, name, inputs.budget,
                           seed=inputs.request.seed, inputs=recorded,
                           params={**result.params, **params, "request": decisive(inputs)},
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
