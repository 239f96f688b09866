"""Reading a selection directory with its pool and target records, for the report and ``inspect``.

Pool records (for texts and lengths) come from the ``pool`` files given or, when none
are given, from the pool files recorded in the manifest; targets from the ``targets``
files given or the manifest's ``inputs.targets``. Files given explicitly must match the
selection (a mismatch raises). Recorded files that are missing or changed are skipped
with a warning instead: the selection is still worth looking at without them, and the
warning says which flag to pass.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_less.data.records import Record, RecordError, as_paths, file_sha256, read_records
from lightning_less.errors import IncompatibleError
from lightning_less.selection.outputs import Selection, StaleSelectionError, read_selection

log = logging.getLogger(__name__)


@dataclass
class SelectionInputs:
    """A selection and, where available, its pool and target records."""

    selection: Selection
    """The selection directory read back (checked against ``pool`` when that is given)."""
    pool: list[Record] | None = None
    """The pool records in pool-index order, or ``None`` when unavailable."""
    pool_note: str = ""
    """Where the pool records came from, or why there are none."""
    targets: list[Record] | None = None
    """The target records, or ``None`` when none were given or recorded."""
    targets_note: str = ""
    """Where the target records came from, or why there are none."""
    warnings: list[str] = field(default_factory=list)
    """Recorded input files that were skipped or have changed, one sentence each."""


def _warn(warnings: list[str], note: str) -> str:
    """Log ``note`` as a warning, collect it, and return it (as the note of the skipped input)."""
    log.warning(note)
    warnings.append(note)
    return note


def load_pool(sel: Selection, pool: Any, warnings: list[str]) -> tuple[Selection, list[Record] | None, str]:
    """The pool records of a selection (explicit files must match; recorded ones are skipped on a mismatch).

    Args:
        sel: the selection.
        pool: pool jsonl file(s) given by the user, or ``None`` for the manifest's.
        warnings: where a skipped recorded file is reported.

    Returns:
        The selection (read again, checked against the records, when they are used),
        the records or ``None``, and a note saying where they came from or why they are missing.

    Raises:
        StaleSelectionError: explicit ``pool`` files that do not match the selection.
    """
    explicit = as_paths(pool)
    if explicit:
        log.info("reading pool records from %s", ", ".join(explicit))
        records = read_records(explicit)
        checked = read_selection(sel.path, records)  # raises StaleSelectionError on a mismatch
        return checked, records, f"pool records read from {', '.join(explicit)}"
    recorded = as_paths(sel.manifest.get("inputs", {}).get("pool"))
    if not recorded:
        note = "the manifest records no pool files and none were given (--pool)"
        warnings.append(note)
        return sel, None, note
    missing = [p for p in recorded if not os.path.isfile(p)]
    if missing:
        note = f"pool file(s) recorded in the manifest not found: {', '.join(missing)} (pass --pool)"
        return sel, None, _warn(warnings, note)
    log.info("reading pool records from the manifest's pool files: %s", ", ".join(recorded))
    try:
        records = read_records(recorded)
        checked = read_selection(sel.path, records)
    except (StaleSelectionError, RecordError) as err:
        return sel, None, _warn(warnings, f"pool records not used: {err}")
    return checked, records, f"pool records read from {', '.join(recorded)}"


def load_targets(manifest: dict[str, Any], targets: Any, warnings: list[str]) -> tuple[list[Record] | None, str]:
    """Read target records from explicit files, else from the manifest's ``inputs.targets``.

    Args:
        manifest: the selection's manifest.
        targets: target jsonl file(s) given by the user, or ``None`` for the manifest's.
        warnings: where a missing, changed or unreadable recorded file is reported.

    Returns:
        The records (``None`` when there are none to use) and a note saying where they
        came from or why they are missing.

    Raises:
        IncompatibleError: explicit ``targets`` other than the files the manifest records.
    """
    explicit = as_paths(targets)
    if explicit:
        recorded = manifest.get("inputs", {}).get("targets")
        if isinstance(recorded, list) and recorded and all(isinstance(e, dict) and e.get("sha256") for e in recorded):
            if [file_sha256(p) for p in explicit] != [e["sha256"] for e in recorded]:  # per-subtask scores are theirs
                raise IncompatibleError(f"--targets {explicit} are not the target files the selection was made for "
                                        f"({[e.get('path') for e in recorded]}, compared by sha256)")
        log.info("reading target records from %s", ", ".join(explicit))
        return read_records(explicit), f"targets read from {', '.join(explicit)}"
    recorded = as_paths(manifest.get("inputs", {}).get("targets"))
    if not recorded:
        return None, "no target files given (--targets) or recorded in the manifest"
    missing = [p for p in recorded if not os.path.isfile(p)]
    if missing:
        note = f"target file(s) recorded in the manifest not found: {', '.join(missing)} (pass --targets)"
        return None, _warn(warnings, note)
    log.info("reading target records from the manifest's target files: %s", ", ".join(recorded))
    entries = manifest["inputs"]["targets"]
    for entry in entries if isinstance(entries, list) else [entries]:
        # A changed file is still read: the report shows what is there now, and says so.
        if isinstance(entry, dict) and entry.get("sha256") and file_sha256(entry["path"]) != entry["sha256"]:
            _warn(warnings, f"target file {entry['path']} changed since the selection was written (sha256 differs)")
    try:
        return read_records(recorded), f"targets read from {', '.join(recorded)}"
    except RecordError as err:
        return None, _warn(warnings, f"target records not used: {err}")


def load_inputs(selection: str | os.PathLike[str], pool: Any = None, targets: Any = None) -> SelectionInputs:
    """Read a selection directory and, where available, its pool and target records.

    Args:
        selection: the selection directory.
        pool: pool jsonl file(s); default: the pool files recorded in the manifest.
        targets: target jsonl file(s); default: the manifest's ``inputs.targets``.

    Returns:
        The selection, records, notes and warnings.
    """
    selection_dir = Path(selection)
    log.info("reading selection %s", selection_dir)
    warnings: list[str] = []
    sel, pool_records, pool_note = load_pool(read_selection(selection_dir), pool, warnings)
    target_records, targets_note = load_targets(sel.manifest, targets, warnings)
    return SelectionInputs(sel, pool_records, pool_note, target_records, targets_note, warnings)
