"""The manifest of a gradient datastore: building it, reading it back whole, comparing two.

A manifest is refused by name when it is truncated, not UTF-8, not a JSON object, lacks
a key the store owns, or describes an impossible layout, so that a damaged store is an
:class:`~lightning_less.errors.InputError` that says to rebuild it, never a
``JSONDecodeError`` traceback or a ``KeyError`` deep inside the library.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lightning_less.errors import IncompatibleError, InputError, MissingInputError
from lightning_less.stores.files import read_json
from lightning_less.stores.quantize import STORE_DTYPES, dtype_family

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: Keys that change with progress or time, not with what the store contains.
PROGRESS_KEYS = frozenset({"complete", "created"})
#: Keys that must agree between a pool store and a target store to be scored together.
SCORING_KEYS = ("format_version", "projector", "dims", "snapshots")
#: Keys the store itself sets (and checks when it opens one).
OWNED_KEYS = ("format_version", "snapshots", "dims", "dtype", "n_examples", "library_version")
DTYPES = STORE_DTYPES
_SNAPSHOT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: What to do about a corrupt store, in every message that refuses one.
REBUILD = "Rerun the pass that writes it with overwrite=True (--overwrite true) to rebuild it."


def _library_version() -> str:
    from lightning_less.version import __version__

    return __version__


def diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON-like values differ, with both values."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in a or key not in b:
                out.append(f"{name}: {a.get(key, '<missing>')!r} != {b.get(key, '<missing>')!r}")
            else:
                out.extend(diff(a[key], b[key], name))
        return out
    return [] if a == b else [f"{prefix}: {a!r} != {b!r}"]


def incompatibilities(mine: Mapping[str, Any], theirs: Mapping[str, Any], keys: Sequence[str] | None,
                      mine_label: Any, their_label: Any) -> list[str]:
    """What keeps two stores' manifests from being scored together: ``keys`` that differ (``None``: all but
    progress keys), and dtypes of two families (fp16/fp32, ``int8``, ``1bit``), naming both stores."""
    if keys is None:
        keys = sorted((set(mine) | set(theirs)) - PROGRESS_KEYS)
    diffs = diff({k: mine.get(k, "<missing>") for k in keys}, {k: theirs.get(k, "<missing>") for k in keys})
    if dtype_family(str(mine.get("dtype"))) != dtype_family(str(theirs.get("dtype"))) and "dtype" not in keys:
        diffs.append(f"dtype: {mine.get('dtype')!r} ({mine_label}) != {theirs.get('dtype')!r} ({their_label}): a "
                     "quantized store goes only with one quantized the same way; rerun one gradient pass with the "
                     "other's store_dtype")
    return diffs


def _short(digest: Any) -> str:
    return f"{str(digest)[:12]}…" if digest is not None else "<missing>"


def snapshot_mismatch(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]], a_label: str,
                      b_label: str) -> IncompatibleError | None:
    """The refusal of two stores computed from different snapshots (their manifests' ``snapshot_info``), or None.

    The message names the first snapshot file whose sha256 differs, with both digests
    shortened, and how many others differ; the whole list (full digests) is the error's
    ``details``, which the command line shows under ``--debug``.
    """
    lines = []
    for i in range(max(len(a), len(b))):
        sa, sb = (a[i] if i < len(a) else {}), (b[i] if i < len(b) else {})
        na, nb = sa.get("name", "<none>"), sb.get("name", "<none>")
        if na != nb:
            lines.append((f"snapshot {i + 1}", f"is {na} in the first and {nb} in the second", f"{na} != {nb}"))
            continue
        ha, hb = sa.get("sha256") or {}, sb.get("sha256") or {}
        for f in sorted(set(ha) | set(hb)):
            if ha.get(f) != hb.get(f):
                lines.append((f"{na}/{f}", f"has sha256 {_short(ha.get(f))} in the first and {_short(hb.get(f))} in "
                              "the second", f"{ha.get(f, '<missing>')} != {hb.get(f, '<missing>')}"))
    if not lines:
        return None
    (what, how, _), others = lines[0], len(lines) - 1
    more = f"; {others} other snapshot file{'s' if others != 1 else ''} differ{'s' if others == 1 else ''} too " \
           "(--debug lists them all)" if others else ""
    return IncompatibleError(
        f"{a_label} and {b_label} were computed from different snapshots: {what} {how}{more}. Compute both stores "
        "from the same warmup's snapshots (the gradient pass with the same snapshots for the pool and the targets)",
        details="\n".join(f"{what}: {full}" for what, _, full in lines))


def without(manifest: Mapping[str, Any], keys: frozenset[str] | set[str]) -> dict[str, Any]:
    """The manifest less ``keys`` (progress keys, a shard entry...)."""
    return {k: v for k, v in manifest.items() if k not in keys}


def normalise(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON round trip, so tuples and numpy scalars compare like the stored manifest."""
    return json.loads(json.dumps(manifest, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def layout_problem(snapshots: Any, dims: Any, n_examples: Any, dtype: Any) -> str | None:
    """What is wrong with a store's shape description, or None (shared by create and open)."""
    if not isinstance(snapshots, list) or not snapshots or len(set(map(str, snapshots))) != len(snapshots) \
            or not all(isinstance(s, str) and _SNAPSHOT_NAME.match(s) for s in snapshots):
        return f"snapshots must be distinct, non-empty names of letters, digits, '._-': {snapshots}"
    if not isinstance(dims, list) or not dims or len(set(dims)) != len(dims) \
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
        return f"dims must be distinct positive integers: {dims}"
    if not isinstance(n_examples, int) or isinstance(n_examples, bool) or n_examples <= 0:
        return f"n_examples must be a positive integer, got {n_examples!r}"
    if dtype not in DTYPES:
        return f"dtype must be one of {DTYPES}, got {dtype!r}"
    return None


def build_manifest(manifest: Mapping[str, Any], snapshots: Sequence[str], dims: Sequence[int],
                   n_examples: int, dtype: str) -> dict[str, Any]:
    """The full manifest of a new store: the caller's keys plus the ones the store owns.

    Raises:
        ValueError: the caller sets a key the store owns, misses ``feature_kind`` or
            ``projector``, or the layout is impossible.
    """
    clash = sorted({*OWNED_KEYS, *PROGRESS_KEYS} & set(manifest))
    if clash:
        raise ValueError(f"manifest keys {clash} are set by the datastore; pass them as arguments")
    for key in ("feature_kind", "projector"):
        if key not in manifest:
            raise ValueError(f"the manifest must record {key!r}")
    snapshots, dims = list(snapshots), [int(d) for d in dims]
    problem = layout_problem(snapshots, dims, int(n_examples), dtype)
    if problem:
        raise ValueError(problem)
    return normalise({
        **manifest, "format_version": FORMAT_VERSION, "snapshots": snapshots, "dims": dims, "dtype": dtype,
        "n_examples": int(n_examples), "library_version": _library_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "complete": False,
    })


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the store at ``path``, checked.

    Raises:
        MissingInputError: no manifest (not a store).
        InputError: the manifest is damaged (named, with what to do).
        IncompatibleError: another format version.
    """
    try:
        manifest = read_json(path / MANIFEST, REBUILD, required=OWNED_KEYS)
    except FileNotFoundError:
        raise MissingInputError(f"{path} is not a gradient datastore (no {MANIFEST})") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IncompatibleError(f"{path}: datastore format_version {version!r}, this library reads {FORMAT_VERSION}")
    problem = layout_problem(manifest["snapshots"], manifest["dims"], manifest["n_examples"], manifest["dtype"])
    if problem:
        raise InputError(f"{path / MANIFEST} is corrupt or incomplete: {problem}. {REBUILD}")
    return manifest
