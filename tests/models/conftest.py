"""The real pretrained model of the tests: ``builtin:smollm2-135m``, built once per test session."""

from __future__ import annotations

import pytest

SMOLLM2 = "builtin:smollm2-135m"


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> str:
    """The saved SmolLM2-135M-Instruct directory in the session's cache (the one ``builtin:smollm2-135m`` resolves to).

    Session fixtures run before the per-test cache isolation of ``tests/conftest.py``, so the
    same cache directory is named here explicitly: a build into the user's own cache would
    hide a broken build behind an old directory.
    """
    import torch

    from lightning_less.models.builtin import resolve_model_path

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # see one_thread
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("LIGHTNING_LESS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
            return resolve_model_path(SMOLLM2)
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # On a busy 2-core machine OpenMP spin-waits made SmolLM2's forward passes several times
    # slower with 2 threads than with 1; results do not depend on the thread count here.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
