"""Text forms of numbers and strings shared by the report page, ``inspect`` and the comparison tables.

Two forms of a number are kept apart on purpose: :func:`format_number` is what a reader
sees (rounded, thousands separators), :func:`exact_text` is what a tool reads back
(``repr`` of the float), so a page can show one and carry the other in an attribute.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MISSING = "—"
"""What :func:`format_number` shows for a missing number (``None`` or NaN)."""


def is_missing(value: Any) -> bool:
    """``True`` for ``None`` and for a float NaN (an empty cell of ``scores.csv``)."""
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def format_number(value: Any, spec: str = ".4g", *, missing: str = MISSING, thousands: bool = True) -> str:
    """A number as a reader sees it.

    Args:
        value: an int, float, bool (numpy scalars too), ``None``, or anything else
            (shown with ``str``).
        spec: the format spec of floats (``".4g"``; ``".3f"`` for fixed digits).
        missing: the text for ``None`` and NaN.
        thousands: group the digits of integers (``1,234``).

    Returns:
        The text; integers exactly, floats rounded by ``spec``.
    """
    if is_missing(value):
        return missing
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}" if thousands else str(int(value))
    if isinstance(value, (float, np.floating)):
        return format(float(value), spec)
    return str(value)


def exact_text(value: Any) -> str:
    """A number as a tool reads it back: ``repr`` of a float, an integer's digits, ``""`` when missing."""
    if is_missing(value):
        return ""
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return str(value)


def ellipsize(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, the last one an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shorten(text: str, limit: int) -> str:
    """``text`` cut after ``limit`` characters, saying how many were left out (for long record texts)."""
    return text if len(text) <= limit else text[:limit] + f" … [{len(text) - limit} more characters]"


def one_line(text: str, limit: int = 120) -> str:
    """The non-blank lines of ``text`` joined by `` ⏎ `` and ellipsized to ``limit`` characters."""
    return ellipsize(" ⏎ ".join(part for part in text.splitlines() if part.strip()), limit)
