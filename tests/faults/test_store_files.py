"""A damaged datastore or trajectory store is refused by name, never mapped, zero-filled or half-trusted.

Each cell damages one file of a finished store the way a full disk, a killed copy or a
stray edit would, then checks: the exact error class, that the message names the file and
says to rebuild with ``overwrite``, that opening did not change the file (numpy's ``r+``
memmap extends a short file with zeros), and that ``overwrite=True`` rebuilds a store equal
to the original.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from lightning_less.errors import IncompatibleError, InputError, MissingInputError
from lightning_less.stores.datastore import GradientDatastore
from lightning_less.stores.trajectory import TrajectoryStore
from tests.faults.conftest import DIMS, MANIFEST, N, SNAPSHOTS, fill, make_store, rows, truncate

FEATURES = "features/epoch_001/dim_8.npy"
DONE = "done/epoch_000.npy"


def _replace_array(path, array):
    np.save(path, array)


DAMAGE = {
    # cell: (file, how, what the message says)
    "features: data truncated": (FEATURES, lambda p: truncate(p, -5), "truncated"),
    "features: header truncated": (FEATURES, lambda p: truncate(p, 40), "no valid .npy header"),
    "features: empty file": (FEATURES, lambda p: truncate(p, 0), "no valid .npy header"),
    "features: extra bytes": (FEATURES, lambda p: p.open("ab").write(b"\0" * 4), "longer than its array"),
    "features: other dtype": (FEATURES, lambda p: _replace_array(p, np.ones((N, 8), np.float16)), "float16"),
    "features: other shape": (FEATURES, lambda p: _replace_array(p, np.ones((N, 9), np.float32)), "(12, 9)"),
    "features: missing": (FEATURES, lambda p: p.unlink(), "missing"),
    "done: truncated": (DONE, lambda p: truncate(p, -1), "truncated"),
    "done: missing": (DONE, lambda p: p.unlink(), "missing"),
    "done: not a bool mask": (DONE, lambda p: p.write_bytes(p.read_bytes()[:-1] + b"\x07"), "other than 0 and 1"),
    "manifest: truncated": ("manifest.json", lambda p: truncate(p, p.stat().st_size // 2), "not valid JSON"),
    "manifest: empty": ("manifest.json", lambda p: truncate(p, 0), "not valid JSON"),
    "manifest: not UTF-8": ("manifest.json", lambda p: p.write_bytes(b"\xff\xfe{}"), "not valid JSON"),
    "manifest: not an object": ("manifest.json", lambda p: p.write_text("[1, 2]"), "expected an object"),
    "manifest: key missing": ("manifest.json",
                              lambda p: p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items()
                                                                 if k != "n_examples"})), "'n_examples'"),
    "manifest: impossible dims": ("manifest.json",
                                  lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "dims": [8, 0]})),
                                  "dims must be"),
    "manifest: snapshot name escapes the store": (
        "manifest.json", lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "snapshots": ["../x"]})),
        "snapshots must be"),
}


@pytest.mark.parametrize("cell", list(DAMAGE))
def test_damaged_store_is_refused_by_name_then_rebuilt_with_overwrite(tmp_path, cell):
    name, damage, says = DAMAGE[cell]
    store = make_store(tmp_path / "s")
    damage(store / name)
    damaged = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}

    for attempt in (lambda: GradientDatastore.open(store),  # a reader (selection)
                    lambda: GradientDatastore.open(store, mode="r+"),  # a writer
                    lambda: GradientDatastore.create(store, MANIFEST, SNAPSHOTS, DIMS, N, dtype="float32")):  # resume
        with pytest.raises(InputError) as err:
            attempt()
        message = str(err.value)
        assert str(store / name) in message and says in message, message
        assert "overwrite=True" in message
    # Nothing was changed by trying (no zero-filled tail, no rewritten manifest).
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == damaged

    rebuilt = GradientDatastore.create(store, MANIFEST, SNAPSHOTS, DIMS, N, dtype="float32", overwrite=True)
    assert rebuilt.pending().size == N  # rebuilt from nothing, not resumed from the damaged files
    fill(rebuilt, np.arange(N))
    rebuilt.finalize()
    again = GradientDatastore.open(store)
    for snap in SNAPSHOTS:
        for dim in DIMS:
            np.testing.assert_array_equal(again.features(snap, dim), rows(snap, dim, np.arange(N)))


def test_truncated_pool_store_stops_the_selection(tmp_path):
    """The failure this guards against: a truncated pool store read as complete, and a selection written with exit 0."""
    from lightning_less.selection.runner import run_selection
    from tests.helpers import qa_records, write_jsonl

    pool = write_jsonl(tmp_path / "pool.jsonl", qa_records(N, prefix="p"))
    targets = write_jsonl(tmp_path / "t.jsonl", qa_records(3, prefix="t"))
    common = {"projector": MANIFEST["projector"], "snapshot_lrs": [1e-3, 5e-4], "excluded_indices": []}
    make_store(tmp_path / "pool", manifest={**common, "feature_kind": "adam"})
    target_store = GradientDatastore.create(tmp_path / "targets", {**common, "feature_kind": "sgd"}, SNAPSHOTS, DIMS, 3,
                                            dtype="float32")
    fill(target_store, np.arange(3))
    target_store.finalize()
    args = dict(method="less", pool_files=[str(pool)], target_files=[str(targets)], count=4,
                pool_store=tmp_path / "pool", target_store=tmp_path / "targets")
    run_selection(output=tmp_path / "ok", **args)  # the intact stores select

    truncate(tmp_path / "pool" / "features/epoch_000/dim_8.npy", -16)  # the last row loses its bytes
    with pytest.raises(InputError, match="dim_8.npy is corrupt or incomplete: truncated"):
        run_selection(output=tmp_path / "sel", **args)
    assert not (tmp_path / "sel").exists()


def test_other_format_version_is_incompatible(tmp_path):
    store = make_store(tmp_path / "s")
    manifest = json.loads((store / "manifest.json").read_text())
    (store / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(IncompatibleError, match="format_version 99"):
        GradientDatastore.open(store)


def test_no_manifest_is_no_store(tmp_path):
    with pytest.raises(MissingInputError, match="not a gradient datastore"):
        GradientDatastore.open(tmp_path)


def test_damaged_shard_is_named_by_the_merge(tmp_path):
    make_store(tmp_path / "rank0", complete=False)
    truncate(tmp_path / "rank0" / DONE, -3)
    with pytest.raises(InputError, match="rank0/done/epoch_000.npy"):
        GradientDatastore.merge_shards([tmp_path / "rank0"], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


# ------------------------------------------------------------------ trajectory store
def _trajectories(tmp_path):
    traj = np.random.default_rng(0).uniform(0.5, 3.0, (N, 3)).astype(np.float32).astype(np.float64)  # stored as float32
    traj[4] = np.nan  # an example without a defined loss
    TrajectoryStore(tmp_path / "traj").write(traj, ["step_000001", "step_000002", "step_000003"], {"loss": "mean"})
    return traj


@pytest.mark.parametrize(("name", "damage", "says"), [
    ("features/step_000002/dim_1.npy", lambda p: truncate(p, -4), "truncated"),
    ("done/step_000003.npy", lambda p: p.unlink(), "missing"),
    ("manifest.json", lambda p: truncate(p, 20), "not valid JSON"),
])
def test_damaged_trajectory_store_is_refused_by_name(tmp_path, name, damage, says):
    traj = _trajectories(tmp_path)
    np.testing.assert_array_equal(TrajectoryStore(tmp_path / "traj").read()[0], traj)
    damage(tmp_path / "traj" / name)
    with pytest.raises(InputError) as err:
        TrajectoryStore(tmp_path / "traj").read()
    assert str(tmp_path / "traj" / name) in str(err.value) and says in str(err.value)
    # Rewriting refuses without overwrite, and with it gives back the same trajectories.
    with pytest.raises(FileExistsError):
        TrajectoryStore(tmp_path / "traj").write(traj, ["a", "b", "c"], {})
    TrajectoryStore(tmp_path / "traj").write(traj, ["step_000001", "step_000002", "step_000003"], {"loss": "mean"},
                                             overwrite=True)
    np.testing.assert_array_equal(TrajectoryStore(tmp_path / "traj").read()[0], traj)
