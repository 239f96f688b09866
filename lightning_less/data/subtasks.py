"""The one check on target subtasks, run by every entry point before any compute.

Target examples are grouped by their ``subtask`` field, and a target without one is put
in a subtask named after its source (its ``dataset`` field, else its file's name). That is
right when *no* target has a subtask (each source is one task) but wrong for a set that labels some records and not
others: the unlabelled ones would silently become a subtask of their own, weighted like
a real one (``max_subtask_mean`` takes the best subtask per pool example). Such a mix is
refused, naming the files and the first unlabelled record.
"""

from __future__ import annotations

from collections.abc import Iterable

from lightning_less.data.records import Record
from lightning_less.errors import InputError

__all__ = ["check_target_subtasks"]


def check_target_subtasks(targets: Iterable[Record], flag: str = "--targets") -> None:
    """Refuse targets where some records have a ``subtask`` and others do not.

    Args:
        targets: the target records (all files together).
        flag: how the user gave them, for the message.

    Raises:
        InputError: a mix of labelled and unlabelled targets; names the files with
            labelled targets and the first unlabelled record (``file:line``).
    """
    first_missing: Record | None = None
    missing = total = 0
    labelled_files: dict[str, None] = {}  # ordered, distinct
    for record in targets:
        total += 1
        if record.subtask is None:
            missing += 1
            first_missing = first_missing or record
        else:
            labelled_files.setdefault(record.path)
    if first_missing is None or not labelled_files:
        return
    files = ", ".join(labelled_files)
    raise InputError(
        f"{first_missing.path}:{first_missing.line}: this target has no 'subtask' field, but the targets of {flag} in "
        f"{files} do ({missing} of {total} targets lack one). Targets are scored per subtask, and the unlabelled ones "
        f"would silently form a subtask named after their source ({first_missing.source!r}): give every target a "
        "subtask, or none"
    )
