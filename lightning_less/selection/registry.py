"""The selection-method registry: what each method needs, how its inputs are checked, when a selection is reused.

Each method is one module of :mod:`lightning_less.selection.methods` holding a
:class:`SelectionMethod` subclass decorated with :func:`register`. The modules are found
with :mod:`pkgutil`, so adding a method touches one file::

    @register
    class Random(SelectionMethod):
        name = "random"
        description = "a seeded uniform sample of the pool"
        deciding = ("seed",)

        def select(self, inputs: Inputs) -> SelectionResult:
            return select_random(len(inputs.pool), inputs.k, inputs.request.seed)

Every method reads the same :class:`SelectionRequest` (the pool, the targets, the budget and
the union of all methods' options; each method uses its own). A method declares:

* ``needs``: request fields that must be given (``--targets``, ``--pool_store``, ...),
  checked before anything is read;
* :meth:`SelectionMethod.load`: opens and checks its input files, before any compute;
* :meth:`SelectionMethod.select`: the selection itself (the pure selectors of
  :mod:`~lightning_less.selection.scoring`, :mod:`~lightning_less.selection.baselines`,
  :mod:`~lightning_less.selection.s2l`);
* ``deciding``: the request fields that, beside the method, the budget ``k`` and the pool
  files, decide whether an existing selection can be reused (:func:`stale_reason`);
* ``default_fraction`` (5%, as LESS) and ``whole_pool`` (``full``);
* :meth:`SelectionMethod.excluded`: pool rows its inputs hold no example for (a store's
  rows without a response token). With those the runner finds itself (the pool tokenized
  with ``--model``'s tokenizer at ``--max_length``) they are ``inputs.excluded``: every
  method selects among ``inputs.eligible`` only, and the runner checks it did.

:mod:`lightning_less.selection.runner` runs a request through these steps.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import pkgutil
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from lightning_less.data.records import Record, as_paths, file_sha256
from lightning_less.errors import InputError, MissingInputError
from lightning_less.selection.result import SelectionResult
from lightning_less.selection.scoring import AGGREGATIONS

DEFAULT_FRACTION = 0.05  # LESS's default budget

# What each input a method may need is, for the error naming its missing flag.
NEEDS_HELP = {
    "targets": "target examples: jsonl files with a subtask field",
    "pool_store": "the pool's adam gradient datastore",
    "target_store": "the targets' sgd gradient datastore",
    "model": "a model name or path",
    "trajectories": "a loss-trajectory store of the pool",
}
STORE_FIELDS = ("pool_store", "target_store", "trajectories")  # directories whose content is part of their identity


@dataclass
class SelectionRequest:
    """One selection as asked for: pool, targets, budget and every method's options (each method reads its own)."""

    pool: Sequence[str]
    """The pool's jsonl files or datasets inputs (saved dir, parquet, arrow, hf://name; one global selection)."""
    targets: Sequence[str] = ()
    """Target examples' jsonl files (a ``subtask`` field groups them); less, rds, bm25 and dsir need them."""
    fraction: float | None = None
    """Budget as a fraction of the pool (default: 5%, the whole pool for ``full``)."""
    count: int | None = None
    """Budget as a number of examples (instead of ``fraction``)."""
    seed: int = 0
    """Seed of the sampled methods (random, s2l) and of the S2L proxy."""
    pool_store: str | None = None
    """less: the pool's ``adam`` gradient datastore."""
    target_store: str | None = None
    """less: the targets' ``sgd`` gradient datastore."""
    dim: int | None = None
    """less: which projected dim to use (default: the stores' first)."""
    aggregation: str = "max_subtask_mean"
    """less / rds: ``max_subtask_mean``, ``mean`` or ``round_robin`` over target subtasks."""
    model: str | None = None
    """rds: the model whose hidden states are compared (s2l: a proxy to train, by the select / compare commands);
    for every method, its tokenizer finds the pool examples without a response token (never selected)."""
    trajectories: str | None = None
    """s2l: a loss-trajectory store of the pool."""
    n_clusters: int = 100
    """s2l: number of k-means clusters (clamped to the pool size)."""
    stratify_by_source: bool = False
    """s2l: sample each source separately."""
    max_length: int = 2048
    """rds (and the S2L proxy): truncation length in tokens; with ``model``, for every method, the length at
    which pool examples left without a response token are never selected."""
    trainer: dict[str, Any] | None = None
    """Trainer arguments for what a method runs (rds: ``accelerator`` picks the device)."""

    def __post_init__(self) -> None:
        # Options are checked here, before any file is read.
        self.pool, self.targets = tuple(as_paths(self.pool)), tuple(as_paths(self.targets))
        for name in STORE_FIELDS:
            if getattr(self, name) is not None:
                setattr(self, name, os.fspath(getattr(self, name)))
        if not self.pool:
            raise MissingInputError("no pool files given: pass --pool")
        if self.fraction is not None and self.count is not None:
            raise InputError(f"give --fraction or --count, not both (got {self.fraction} and {self.count})")
        if self.aggregation not in AGGREGATIONS:
            raise InputError(f"--aggregation {self.aggregation!r} is unknown: expected one of {list(AGGREGATIONS)}")
        for name, low in (("n_clusters", 1), ("max_length", 1), ("dim", 1)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or int(value) != value or value < low):
                raise InputError(f"--{name} must be an integer >= {low}, got {value!r}")


REQUEST_FIELDS = tuple(f.name for f in fields(SelectionRequest))


@dataclass
class Inputs:
    """A method's inputs: the request, the records read, the budget, and what :meth:`SelectionMethod.load` opened."""

    method: SelectionMethod
    request: SelectionRequest
    pool: list[Record]
    targets: list[Record]
    budget: dict[str, Any]
    """``{"fraction", "count", "k"}`` as recorded in the manifest."""
    loaded: dict[str, Any] | None = None
    """What ``load`` returned; ``None`` while an input is still to be made (e.g. by the S2L proxy)."""
    excluded: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """Pool indices never selected, ascending: examples with no response token left after truncation
    (docs/algorithms.md, "Examples without a response token")."""

    @property
    def eligible(self) -> np.ndarray:
        """The pool indices a method may select, ascending (every index but ``excluded``)."""
        return np.setdiff1d(np.arange(len(self.pool), dtype=np.int64), self.excluded)

    @property
    def k(self) -> int:
        """The number of examples to select."""
        return int(self.budget["k"])

    @property
    def target_subtasks(self) -> list[str]:
        """Each target's subtask, its source when it has none."""
        return [t.subtask or t.source for t in self.targets]

    def value(self, name: str) -> Any:
        """A request option as the method resolved it in ``load`` (e.g. the default ``dim``), else as given."""
        loaded = self.loaded or {}
        return loaded[name] if name in loaded else getattr(self.request, name)

    @cached_property
    def target_fingerprint(self) -> list[dict[str, Any]]:
        """The target files with their sha256 (for the manifest)."""
        from lightning_less.data.records import files_fingerprint

        return files_fingerprint(self.request.targets)


class SelectionMethod:
    """A selection method: what it needs, how it loads and selects, what decides reuse. Subclass and :func:`register`."""

    name: ClassVar[str] = ""
    """The method's name (``--method``)."""
    description: ClassVar[str] = ""
    """One line for the help."""
    needs: ClassVar[tuple[str, ...]] = ()
    """Request fields that must be given."""
    deciding: ClassVar[tuple[str, ...]] = ()
    """Request fields that, beside the method, ``k`` and the pool, must match for a selection to be reused."""
    default_fraction: ClassVar[float] = DEFAULT_FRACTION
    """Budget when neither ``fraction`` nor ``count`` is given."""
    whole_pool: ClassVar[bool] = False
    """The method always takes the whole pool (no budget applies)."""
    hint: ClassVar[str] = ""
    """Appended to the missing-input error (another way to get what is missing)."""

    def load(self, inputs: Inputs) -> dict[str, Any]:
        """Open and check the method's input files, without computing anything; the result becomes ``inputs.loaded``.

        Raise :mod:`lightning_less.errors` classes naming the flag and the file.
        """
        return {}

    def excluded(self, inputs: Inputs) -> Sequence[int]:
        """Pool rows the loaded inputs hold no example for (e.g. a store's ``excluded_indices``): never selected."""
        return ()

    def select(self, inputs: Inputs) -> SelectionResult:
        """Select ``inputs.k`` pool examples among ``inputs.eligible``."""
        raise NotImplementedError

    def recorded_inputs(self, inputs: Inputs) -> dict[str, Any]:
        """Inputs besides the pool and targets to record in the manifest's ``inputs``."""
        return {}


_REGISTRY: dict[str, SelectionMethod] = {}


def register(cls: type[SelectionMethod]) -> type[SelectionMethod]:
    """Class decorator: add a :class:`SelectionMethod` to the registry under its ``name``."""
    if not cls.name or not cls.description:
        raise TypeError(f"{cls.__name__} must set a name and a one-line description")
    unknown = sorted((set(cls.needs) | set(cls.deciding)) - set(REQUEST_FIELDS))
    if unknown:
        raise TypeError(f"{cls.__name__} names request fields that do not exist: {unknown}")
    other = _REGISTRY.get(cls.name)
    if other is not None and type(other).__qualname__ != cls.__qualname__:
        raise TypeError(f"two selection methods are named {cls.name!r}: {type(other).__qualname__} and {cls.__qualname__}")
    _REGISTRY[cls.name] = cls()
    return cls


def _discover() -> None:
    from lightning_less.selection import methods as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")


def available() -> dict[str, SelectionMethod]:
    """Every registered method by name (alphabetical)."""
    _discover()
    return dict(sorted(_REGISTRY.items()))


def get_method(name: str) -> SelectionMethod:
    """The method named ``name``; an :class:`~lightning_less.errors.InputError` listing the others if there is none."""
    methods = available()
    if name not in methods:
        raise InputError(f"unknown method {name!r} (--method): expected one of {list(methods)}")
    return methods[name]


def check_needs(method: SelectionMethod, request: SelectionRequest, later: Sequence[str] = ()) -> None:
    """Raise :class:`~lightning_less.errors.MissingInputError` naming every flag ``method`` needs and did not get.

    Args:
        method: the method.
        request: the request.
        later: fields that are made before the method runs (e.g. the S2L proxy's trajectories).
    """
    missing = [need for need in method.needs if need not in later and not getattr(request, need)]
    if missing:
        what = "; ".join(f"--{need}: {NEEDS_HELP.get(need, need)}" for need in missing)
        raise MissingInputError(f"method {method.name!r} needs {' and '.join('--' + m for m in missing)} ({what}){method.hint}")


# --------------------------------------------------------------------------- reuse


def _store_identity(path: str | None) -> dict[str, Any] | None:
    """A store directory as its real path and its manifest's sha256 and modification time.

    A store rebuilt in place (even with the same settings, within the same second) is
    another input: its manifest is written again when it is finished.
    """
    if path is None:
        return None
    manifest = Path(path) / "manifest.json"
    if not manifest.is_file():
        return {"path": os.path.realpath(path), "manifest_sha256": None, "manifest_mtime_ns": None}
    return {"path": os.path.realpath(path), "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest()[:16],
            "manifest_mtime_ns": manifest.stat().st_mtime_ns}


def decisive(inputs: Inputs) -> dict[str, Any]:
    """What an existing selection must match to be reused (recorded as the manifest's ``params.request``)."""
    out: dict[str, Any] = {"method": inputs.method.name, "k": inputs.k}
    for name in inputs.method.deciding:
        value = inputs.value(name)
        if name == "targets":
            value = [file_sha256(p) for p in value]
        elif name in STORE_FIELDS:
            value = _store_identity(value)
        out[name] = value
    # What is left out changes any method's selection (a random sample too).
    digest = hashlib.sha256(np.asarray(inputs.excluded, dtype="<i8").tobytes()).hexdigest()[:16]
    out["excluded"] = {"count": int(len(inputs.excluded)), "sha256": digest}
    return json.loads(json.dumps(out))


def _why(key: str, old: Any, new: Any) -> str:
    if key == "k":
        return f"it holds {old} examples, the budget is {new}"
    if key == "seed":
        return f"it was selected with seed {old}, not {new}"
    if key == "targets":
        return "it was selected for other target files"
    if key in STORE_FIELDS and old and new and old.get("path") == new.get("path"):
        return f"its {key} {new['path']} was rebuilt since"
    if key in STORE_FIELDS:
        return f"its {key} is {(old or {}).get('path')}, not {(new or {}).get('path')}"
    if key == "excluded":
        return (f"it left out {(old or {}).get('count')} pool examples without a response token, this request "
                f"{(new or {}).get('count')} (another --model or --max_length)")
    return f"it used {key} {old!r}, not {new!r}"


def stale_reason(manifest: dict[str, Any], inputs: Inputs) -> str | None:
    """Why an existing selection's manifest was made otherwise than ``inputs`` ask (``None``: reuse it)."""
    if manifest.get("method") != inputs.method.name:
        return f"it holds a {manifest.get('method')} selection"
    if manifest.get("n_selected") != inputs.k:
        return _why("k", manifest.get("n_selected"), inputs.k)
    recorded_pool = [p.get("sha256") for p in manifest.get("inputs", {}).get("pool", [])]
    if recorded_pool != [file_sha256(p) for p in inputs.request.pool]:
        return "the pool files changed since"
    recorded, wanted = manifest.get("params", {}).get("request"), decisive(inputs)
    if not isinstance(recorded, dict) or set(recorded) != set(wanted):
        return "its manifest records another request format (made by another version of lightning-less)"
    for key, value in wanted.items():
        if recorded[key] != value:
            return _why(key, recorded[key], value)
    return None


__all__ = ["DEFAULT_FRACTION", "Inputs", "SelectionMethod", "SelectionRequest", "SelectionResult", "available",
           "check_needs", "decisive", "get_method", "register", "stale_reason"]
