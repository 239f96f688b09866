"""Writing and reading a selection directory (the contract in ``docs/architecture.md``).

A selection directory holds three files, written by one function for every method:

* ``scores.csv``: one row per pool example in pool order:
  ``index,path,line,id,source,score`` (+ ``score/<subtask>`` columns) ``,selected,rank``;
  ``score`` is empty for methods without scores, ``rank`` is 1-based and empty for
  examples not selected.
* ``selected.jsonl``: the selected records' input lines, byte for byte (without their
  original line ending; each written with ``"\\n"``), in rank order. A record of a
  ``datasets`` input is written as one JSON object: its row's non-null columns, in column
  order (``json.dumps(..., ensure_ascii=False)``), so the file reads back as the same records.
* ``selected_dataset/`` (only when every pool input is a ``datasets`` input): the selected
  rows, in rank order, as ``Dataset.select(indices).save_to_disk`` writes them.
* ``manifest.json``: method, budget, seed, inputs (pool files with sha256), sizes,
  library version and method parameters. It is written last and is the commit mark:
  a directory without it is not a selection.

Writes are atomic as a set: the files are first written into a temporary directory
next to ``out_dir``, then moved in with ``os.replace`` (same file system), the
manifest last; with ``overwrite=True`` the old manifest is removed first, so a reader
never sees an old manifest beside new files. Existing outputs are never silently
reused or merged (docs/algorithms.md §5).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lightning_less.data.index import RecordIndex
from lightning_less.data.records import Record, files_fingerprint, read_raw_lines
from lightning_less.errors import IncompatibleError, InputError, MissingInputError, StaleOutputError
from lightning_less.stores.files import disk_full_as, make_temp_dir, read_json, remove_temps
from lightning_less.stores.lock import DirectoryLock

FORMAT_VERSION = 1
SCORES_FILE = "scores.csv"
SELECTED_FILE = "selected.jsonl"
MANIFEST_FILE = "manifest.json"
SELECTION_FILES = (SCORES_FILE, SELECTED_FILE, MANIFEST_FILE)
SELECTED_DATASET = "selected_dataset"  # a pool of datasets only: the selected rows as a saved dataset
RAW_CHUNK = 65_536  # selected lines read back (and held) at a time


class StaleSelectionError(StaleOutputError, ValueError):
    """A selection directory that no longer matches the pool it is used with."""


@dataclass(frozen=True)
class Selection:
    """A selection directory read back.

    Attributes:
        path: the directory.
        manifest: the parsed ``manifest.json``.
        selected: ``[k]`` int64 pool indices in rank order.
        table: ``scores.csv`` as columns: ``index``, ``line``, ``rank`` (int64, ``rank``
            0 where not selected), ``selected`` (bool), ``score`` and each
            ``score/<subtask>`` (float64, NaN where empty), ``path``, ``id``, ``source`` (lists of str).
    """

    path: Path
    manifest: dict
    selected: np.ndarray
    table: dict[str, Any]

    @property
    def scores(self) -> np.ndarray:
        """``[n]`` float64 scores in pool order (NaN for methods without scores)."""
        return self.table["score"]


def _pool_files(records: Sequence[Record]) -> list[str]:
    if isinstance(records, RecordIndex):
        return list(records.paths)
    paths: list[str] = []
    for r in records:
        if not paths or paths[-1] != r.path:
            if r.path in paths:
                raise ValueError(f"pool records of {r.path} are not contiguous")
            paths.append(r.path)
    return paths


def _check_records(records: Sequence[Record]) -> None:
    if not records:
        raise ValueError("the pool is empty")
    if isinstance(records, RecordIndex):
        return  # numbered in order by construction: no need to read every record again
    for position, r in enumerate(records):
        if r.index != position:
            raise ValueError(
                f"pool records must be the whole pool in index order; record at position {position} has index {r.index}"
            )


def _check_selected(selected: Any, n: int) -> np.ndarray:
    sel = np.asarray(selected)
    if sel.ndim != 1 or sel.size == 0:
        raise ValueError("no examples selected")
    if not np.issubdtype(sel.dtype, np.integer):
        raise ValueError(f"selected indices must be integers, got dtype {sel.dtype}")
    sel = sel.astype(np.int64)
    if sel.min() < 0 or sel.max() >= n:
        raise ValueError(f"selected indices must be in [0, {n}), got range [{sel.min()}, {sel.max()}]")
    uniq, counts = np.unique(sel, return_counts=True)
    if np.any(counts > 1):
        dup = uniq[counts > 1]
        raise ValueError(f"{dup.size} selected index(es) occur more than once, e.g. {dup[:5].tolist()}")
    return sel


def _fmt(value: Any) -> str:
    # str() of a numpy float scalar is its shortest round-trip repr in its own dtype.
    return "" if np.isnan(value) else str(value)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _existing(out_dir: Path) -> list[str]:
    return [name for name in SELECTION_FILES if (out_dir / name).exists()]


def _exists_message(out_dir: Path) -> str:
    found = ", ".join(_existing(out_dir))
    if (out_dir / MANIFEST_FILE).exists():
        return f"{out_dir} already holds a selection ({found}); pass overwrite=True to replace it"
    return (f"{out_dir} holds an incomplete selection ({found} without {MANIFEST_FILE}: an earlier write was "
            "interrupted); pass overwrite=True to replace it")


def _write_files(tmp: Path, records: Sequence[Record], scores: np.ndarray | None, sub_names: list[str],
                 sub_scores: np.ndarray | None, rank: np.ndarray, sel: np.ndarray, manifest: dict) -> None:
    """The three files of a selection, written and synced into ``tmp`` (the manifest last)."""
    with open(tmp / SCORES_FILE, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["index", "path", "line", "id", "source", "score"] + [f"score/{s}" for s in sub_names]
                        + ["selected", "rank"])
        nan = np.float64("nan")
        for i, r in enumerate(records):
            row = [r.index, r.path, r.line, r.id, r.source, _fmt(scores[i] if scores is not None else nan)]
            if sub_scores is not None:
                row.extend(_fmt(v) for v in sub_scores[i])
            row.extend([1 if rank[i] else 0, rank[i] if rank[i] else ""])
            writer.writerow(row)
        _sync(f)
    with open(tmp / SELECTED_FILE, "wb") as f:
        for start in range(0, sel.size, RAW_CHUNK):
            for line in read_raw_lines(records, sel[start:start + RAW_CHUNK]):
                f.write(line + b"\n")
        _sync(f)
    if isinstance(records, RecordIndex) and records.only_datasets():
        from lightning_less.data.sources import selected_dataset

        selected_dataset(records.sources, sel, str(tmp / SELECTED_DATASET))
    with open(tmp / MANIFEST_FILE, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, default=_json_default)
        f.write("\n")
        _sync(f)


def _sync(f: Any) -> None:
    # On disk before the rename that publishes it, so a crash never leaves a manifest beside empty files.
    f.flush()
    os.fsync(f.fileno())


def write_selection(
    out_dir: str | os.PathLike,
    records: Sequence[Record],
    selected: Any,
    scores: Any | None,
    method: str,
    budget: dict,
    seed: int | None,
    inputs: dict | None = None,
    params: dict | None = None,
    per_subtask: tuple[Sequence[str], Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a selection directory.

    Args:
        out_dir: the directory (created if missing).
        records: the whole pool, in index order (``records[i].index == i``).
        selected: pool indices in rank order (no duplicates).
        scores: ``[n]`` scores in pool order, or ``None`` for methods without scores.
        method: the method name (``"less"``, ``"s2l"``, ...).
        budget: ``{"fraction", "count", "k"}`` (see :func:`~lightning_less.selection.budget.budget_info`).
        seed: the seed used, or ``None``.
        inputs: other inputs to record (targets, datastores, ...); the pool files and
            their sha256 are added under ``"pool"``.
        params: method-specific parameters.
        per_subtask: optional ``(subtask names, [n, S] scores)`` for ``score/<subtask>`` columns.
        overwrite: replace an existing selection instead of raising.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        FileExistsError: when ``out_dir`` already holds selection files and ``overwrite`` is False.
        LockedError: another process is writing ``out_dir`` (the message names it).
        DiskFullError: the disk filled up (the message names ``out_dir``); nothing of this selection is kept.
        ValueError: on inconsistent inputs (duplicated or out-of-range indices, wrong shapes).
    """
    out_dir = Path(out_dir)
    if not overwrite and _existing(out_dir):
        raise FileExistsError(_exists_message(out_dir))
    _check_records(records)
    n = len(records)
    sel = _check_selected(selected, n)
    if scores is not None:
        scores = np.asarray(scores)
        if scores.shape != (n,):
            raise ValueError(f"scores must have shape ({n},), got {scores.shape}")
    sub_names: list[str] = []
    sub_scores = None
    if per_subtask is not None:
        sub_names = [str(s) for s in per_subtask[0]]
        sub_scores = np.asarray(per_subtask[1])
        if sub_scores.shape != (n, len(sub_names)):
            raise ValueError(f"per-subtask scores must have shape ({n}, {len(sub_names)}), got {sub_scores.shape}")
        if len(set(sub_names)) != len(sub_names):
            raise ValueError("subtask names must be distinct")
    inputs = dict(inputs or {})
    if "pool" in inputs:
        raise ValueError("inputs['pool'] is filled in from the records; do not pass it")
    rank = np.zeros(n, dtype=np.int64)
    rank[sel] = np.arange(1, sel.size + 1)

    manifest = {
        "format_version": FORMAT_VERSION,
        "method": method,
        "budget": budget,
        "seed": seed,
        "inputs": {"pool": files_fingerprint(_pool_files(records)), **inputs},
        "n_pool": n,
        "n_selected": int(sel.size),
        "library_version": _library_version(),
        "params": params or {},
    }
    # One writer at a time (a second fails at once, naming the first); held until the set is in place. A full
    # disk is named as such; the temporary directory goes, and ``out_dir`` is made only once every file is written.
    with disk_full_as(out_dir, "the selection", "then select again (nothing of this selection was kept)"), \
            DirectoryLock(out_dir, "selection"):
        remove_temps(out_dir.parent, f".{out_dir.name}.tmp-")  # left by a writer killed earlier: ours to clear now
        tmp = make_temp_dir(out_dir.parent, f".{out_dir.name}.tmp-")
        try:
            _write_files(tmp, records, scores, sub_names, sub_scores, rank, sel, manifest)
            out_dir.mkdir(parents=True, exist_ok=True)
            # Checked again under the lock: another writer may have finished meanwhile.
            if _existing(out_dir):
                if not overwrite:
                    raise FileExistsError(_exists_message(out_dir))
                # Remove the commit mark first so the old set is never read beside new files.
                (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
            # A selected_dataset left by an earlier selection is stale whatever this one writes.
            shutil.rmtree(out_dir / SELECTED_DATASET, ignore_errors=True)
            if (tmp / SELECTED_DATASET).is_dir():
                os.replace(tmp / SELECTED_DATASET, out_dir / SELECTED_DATASET)
            for name in (SCORES_FILE, SELECTED_FILE, MANIFEST_FILE):
                os.replace(tmp / name, out_dir / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _library_version() -> str:
    from lightning_less.version import __version__

    return __version__


REWRITE = "Select again with overwrite=True to rewrite it."
_REQUIRED_COLUMNS = ("index", "path", "line", "id", "source", "score", "selected", "rank")


def _read_table(path: Path) -> dict[str, Any]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = list(reader)
    except FileNotFoundError:
        raise MissingInputError(f"{path} is missing: the selection directory is incomplete. {REWRITE}") from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path} is corrupt ({err}). {REWRITE}") from None
    missing = [c for c in _REQUIRED_COLUMNS if c not in (header or [])]
    if missing:
        raise InputError(f"{path} is corrupt or empty: columns {missing} are missing. {REWRITE}")
    short = [i for i, row in enumerate(rows, start=2) if len(row) != len(header)]
    if short:
        raise InputError(f"{path}, line {short[0]}: {len(rows[short[0] - 2])} fields, the header has {len(header)} "
                         f"(a truncated file?). {REWRITE}")
    columns = list(zip(*rows)) if rows else [() for _ in header]
    table: dict[str, Any] = {}
    try:
        for name, values in zip(header, columns):
            if name in ("index", "line"):
                table[name] = np.asarray([int(v) for v in values], dtype=np.int64)
            elif name == "rank":
                table[name] = np.asarray([int(v) if v else 0 for v in values], dtype=np.int64)
            elif name == "selected":
                table[name] = np.asarray([v == "1" for v in values], dtype=bool)
            elif name == "score" or name.startswith("score/"):
                table[name] = np.asarray([float(v) if v else np.nan for v in values], dtype=np.float64)
            else:
                table[name] = list(values)
    except ValueError as err:
        raise InputError(f"{path}: column {name!r} holds a value that is not a number ({err}). {REWRITE}") from None
    return table


def read_selection(out_dir: str | os.PathLike, records: Sequence[Record] | None = None) -> Selection:
    """Read a selection directory, optionally checking it against the pool.

    Args:
        out_dir: the directory written by :func:`write_selection`.
        records: the pool records; when given, the pool files' sha256, the pool size
            and the selected lines are checked against the manifest.

    Returns:
        The :class:`Selection`.

    Raises:
        MissingInputError: when the directory is not a complete selection (no manifest).
        StaleSelectionError: when the pool changed since the selection was written.
        InputError: a truncated or corrupt file (named).
        IncompatibleError: an unknown format version.
    """
    out_dir = Path(out_dir)
    manifest_path = out_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise MissingInputError(f"{out_dir} is not a complete selection directory: {MANIFEST_FILE} is missing")
    manifest = read_json(manifest_path, REWRITE, required=("format_version", "n_pool", "n_selected", "inputs"))
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IncompatibleError(
            f"{manifest_path}: unsupported format_version {manifest.get('format_version')!r} "
            f"(expected {FORMAT_VERSION})"
        )
    table = _read_table(out_dir / SCORES_FILE)
    ranked = np.nonzero(table["rank"])[0]
    selected = table["index"][ranked[np.argsort(table["rank"][ranked], kind="stable")]]
    if selected.size != manifest["n_selected"] or len(table["index"]) != manifest["n_pool"]:
        raise InputError(f"{out_dir / SCORES_FILE} does not match {MANIFEST_FILE}: {len(table['index'])} rows with "
                         f"{selected.size} ranked, the manifest says {manifest['n_pool']} and {manifest['n_selected']}. "
                         f"{REWRITE}")
    if records is not None:
        _verify_pool(out_dir, manifest, selected, records)
    return Selection(path=out_dir, manifest=manifest, selected=selected, table=table)


def _verify_pool(out_dir: Path, manifest: dict, selected: np.ndarray, records: Sequence[Record]) -> None:
    recorded = manifest["inputs"]["pool"]
    current = files_fingerprint(_pool_files(records))
    if len(recorded) != len(current):
        raise StaleSelectionError(
            f"{out_dir} was selected from {len(recorded)} pool file(s), the pool given has {len(current)}"
        )
    for old, new in zip(recorded, current):
        if old["sha256"] != new["sha256"]:
            raise StaleSelectionError(
                f"{out_dir} is stale: pool file {new['path']} changed since the selection was written "
                f"(sha256 {new['sha256'][:12]}..., manifest has {old['sha256'][:12]}... for {old['path']}); "
                "select again with overwrite=True"
            )
    if len(records) != manifest["n_pool"]:
        raise StaleSelectionError(f"{out_dir}: the pool has {len(records)} records, the manifest {manifest['n_pool']}")
    try:
        with open(out_dir / SELECTED_FILE, "rb") as f:
            written = f.read().split(b"\n")[:-1]
    except FileNotFoundError:
        raise MissingInputError(f"{out_dir / SELECTED_FILE} is missing: the selection is incomplete. {REWRITE}") from None
    if written != read_raw_lines(records, selected):
        raise StaleSelectionError(f"{out_dir}: {SELECTED_FILE} does not match the pool records it names")
