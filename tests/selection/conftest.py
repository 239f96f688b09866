import pytest

from tests.selection.fakes import build_world


@pytest.fixture
def world(tmp_path):
    """Every input of every selection method, made by hand (see ``tests.selection.fakes.build_world``)."""
    return build_world(tmp_path / "in")
