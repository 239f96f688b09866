import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # One built-in tiny model per test session, never the user's own cache.
    monkeypatch.setenv("LIGHTNING_LESS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
