"""Paths shared by the evaluation tests (and the LMEvalCallback tests)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "tests" / "evaluation" / "tasks"  # fixture_mc, fixture_gen (data paths relative to REPO)
PAPER_TASKS = REPO / "configs" / "eval" / "tasks"  # less_tydiqa
