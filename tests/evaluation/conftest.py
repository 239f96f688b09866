from __future__ import annotations

import pytest

from tests.evaluation import REPO


@pytest.fixture
def in_repo(monkeypatch):
    """The fixture tasks' data files are relative to the repository root."""
    monkeypatch.chdir(REPO)
    return REPO
