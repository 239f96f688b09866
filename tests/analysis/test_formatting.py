"""Shown and exact text forms of numbers, and text shortening (shared by the report, inspect and comparisons)."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_less.analysis.formatting import ellipsize, exact_text, format_number, one_line, shorten


@pytest.mark.parametrize(
    "value, shown, exact",
    [
        (None, "—", ""),
        (float("nan"), "—", ""),
        (np.float32("nan"), "—", ""),
        (1234567, "1,234,567", "1234567"),
        (np.int64(42), "42", "42"),
        (True, "True", "True"),  # a bool is not the integer 1
        (np.bool_(False), "False", "False"),
        (0.1 + 0.2, "0.3", "0.30000000000000004"),  # shown rounded, exact to the last bit
        (np.float64(-1.5e-7), "-1.5e-07", "-1.5e-07"),
        ("less", "less", "less"),
    ],
)
def test_shown_and_exact_forms(value, shown, exact):
    assert format_number(value) == shown
    assert exact_text(value) == exact
    if isinstance(value, (float, np.floating)) and exact:
        assert float(exact) == float(value)


def test_format_number_options():
    assert format_number(None, ".3f", missing="n/a") == "n/a"
    assert format_number(2.0 / 3.0, ".3f") == "0.667"
    assert format_number(12345, thousands=False) == "12345"


def test_text_shortening():
    assert ellipsize("abcdef", 6) == "abcdef" and ellipsize("abcdefg", 6) == "abcde…"
    assert len(ellipsize("x" * 100, 10)) == 10
    assert shorten("abcdef", 6) == "abcdef" and shorten("abcdefgh", 6) == "abcdef … [2 more characters]"
    assert one_line("first\n\n  \nsecond\n") == "first ⏎ second"
    assert one_line("a\nb" * 100, 20) == ellipsize(" ⏎ ".join(("a\nb" * 100).splitlines()), 20)
