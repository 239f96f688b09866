"""Files and directories the library creates get the modes the user's umask gives (not forced 0600 / 0700).

``tempfile.mkstemp`` / ``mkdtemp`` create 0600 files and 0700 directories; a store
manifest, a selection or a snapshot directory moved into place from them kept those modes,
so a shared group could not read the results.
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from lightning_less.callbacks.snapshot import GradientFeatureCallback
from lightning_less.data.records import read_records
from lightning_less.selection.budget import budget_info
from lightning_less.selection.outputs import write_selection
from lightning_less.stores.lock import lock_path_for
from lightning_less.stores.trajectory import TrajectoryStore
from tests.faults.conftest import make_store, warmup
from tests.helpers import qa_records, write_jsonl


@pytest.fixture(params=[0o022, 0o002, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _modes(root):
    """``{relative path: permission bits}`` of everything under ``root`` (itself included)."""
    return {p.relative_to(root).as_posix() or ".": stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def _check(root, umask, also=()):
    found = _modes(root)
    assert found, root
    for name, mode in found.items():
        want = (0o777 if (root / name).is_dir() else 0o666) & ~umask
        assert mode == want, f"{root / name}: {oct(mode)}, umask {oct(umask)} gives {oct(want)}"
    for path in also:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_stores_follow_the_umask(tmp_path, umask):
    store = make_store(tmp_path / "s")
    _check(store, umask, also=[lock_path_for(store)])
    TrajectoryStore(tmp_path / "t").write(np.ones((3, 2)), ["a", "b"], {})
    _check(tmp_path / "t", umask)


def test_selections_follow_the_umask(tmp_path, umask):
    records = read_records([write_jsonl(tmp_path / "pool.jsonl", qa_records(4))])
    out = write_selection(tmp_path / "sel", records, [1, 2], None, "random", budget_info(4, count=2), seed=0)
    _check(out, umask)


def test_snapshots_follow_the_umask(tmp_path, umask):
    warmup(tmp_path, [GradientFeatureCallback(str(tmp_path / "snaps"))], epochs=1)
    _check(tmp_path / "snaps", umask)
