"""Errors a user can cause and fix: the command line prints them as one paragraph and exits non-zero.

Raise a :class:`LessError` (or a subclass) for every *expected* failure — bad input, a
missing file, mismatched stores, a step run before the step it needs — with a message
that names the file, line or flag and says what to do. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class LessError(Exception):
    """An expected failure with a message meant for the user (no traceback on the command line).

    Args:
        *args: the message, as for any exception.
        details: more than the one paragraph a user needs first (e.g. every differing file of
            two inputs); the command line prints it with the traceback under ``--debug``.
    """

    def __init__(self, *args: object, details: str | None = None) -> None:
        super().__init__(*args)
        self.details = details


class InputError(LessError, ValueError):
    """Bad input: a file, line, field or option that cannot be used as given."""


class MissingInputError(LessError, FileNotFoundError):
    """A file or directory the command needs does not exist (often: an earlier step was not run)."""


class StaleOutputError(LessError, RuntimeError):
    """An output directory holds results made with other settings; refused unless ``overwrite``."""


class IncompatibleError(LessError, ValueError):
    """Two inputs that must have been made the same way (stores, snapshots, data) were not."""
