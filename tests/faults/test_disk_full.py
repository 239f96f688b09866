"""A full disk is an error when a store is created, naming the path and the bytes needed; never a SIGBUS mid-pass.

Store files used to be sparse (numpy's ``open_memmap(mode="w+")``): the gradient pass then
died with SIGBUS (rc 135) when a write through the memmap found no free block. Now every
block is allocated at create time (``os.posix_fallocate``), nothing is left behind when that
fails, and the run after space was freed gives the same store as if the disk had never filled.
"""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from lightning_less.errors import LessError
from lightning_less.stores.datastore import GradientDatastore
from lightning_less.stores.files import DiskFullError
from lightning_less.stores.trajectory import TrajectoryStore
from tests.faults.conftest import DIMS, MANIFEST, N, SNAPSHOTS, fill, make_store

REAL_FALLOCATE = os.posix_fallocate


def _full_disk_after(monkeypatch, calls_that_succeed: int) -> list[int]:
    """Make ``os.posix_fallocate`` fail with ENOSPC after some calls; returns the list of requested sizes."""
    sizes: list[int] = []

    def fallocate(fd, offset, length):
        sizes.append(length)
        if len(sizes) > calls_that_succeed:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        REAL_FALLOCATE(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    return sizes


def _store_files(path):
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())


@pytest.mark.parametrize("fails_at", [0, 3])
def test_create_on_a_full_disk_names_path_and_bytes_and_leaves_nothing(tmp_path, monkeypatch, fails_at):
    reference = make_store(tmp_path / "reference")
    need = sum((reference / f).stat().st_size for f in _store_files(reference) if f.endswith(".npy"))
    _full_disk_after(monkeypatch, fails_at)
    with pytest.raises(DiskFullError) as err:
        GradientDatastore.create(tmp_path / "s", MANIFEST, SNAPSHOTS, DIMS, N, dtype="float32")
    message = str(err.value)
    assert str(tmp_path / "s") in message and f"({need} bytes)" in message and "Free space" in message, message
    assert isinstance(err.value, LessError) and err.value.errno == errno.ENOSPC
    assert _store_files(tmp_path / "s") == []  # no manifest, no half-allocated arrays

    monkeypatch.undo()  # space freed: the rerun gives exactly the store an uninterrupted run gives
    store = GradientDatastore.create(tmp_path / "s", MANIFEST, SNAPSHOTS, DIMS, N, dtype="float32")
    fill(store, np.arange(N))
    store.finalize()
    assert _store_files(tmp_path / "s") == _store_files(reference)
    for f in _store_files(reference):
        if f != "manifest.json":
            assert (tmp_path / "s" / f).read_bytes() == (reference / f).read_bytes(), f


def test_store_files_are_allocated_not_sparse(tmp_path, monkeypatch):
    store = GradientDatastore.create(tmp_path / "s", MANIFEST, SNAPSHOTS, [4096], 64, dtype="float32")
    big = tmp_path / "s" / "features" / "epoch_000" / "dim_4096.npy"
    assert big.stat().st_blocks * 512 >= big.stat().st_size > 1 << 20  # every block is there before any write
    store.close()
    # Where the platform has no posix_fallocate, zeros are written instead: allocated all the same.
    monkeypatch.delattr(os, "posix_fallocate")
    GradientDatastore.create(tmp_path / "t", MANIFEST, SNAPSHOTS, [4096], 64, dtype="float32").close()
    big = tmp_path / "t" / "features" / "epoch_000" / "dim_4096.npy"
    assert big.stat().st_blocks * 512 >= big.stat().st_size
    assert not np.load(big, mmap_mode="r").any()


def test_resuming_a_sparse_store_allocates_it_first(tmp_path, monkeypatch):
    """A store written sparse (by an older version) is allocated before a resumed pass writes into it."""
    store = make_store(tmp_path / "s", complete=False)
    _full_disk_after(monkeypatch, 0)
    with pytest.raises(DiskFullError, match=r"dim_8\.npy"):
        GradientDatastore.open(store, mode="r+")
    GradientDatastore.open(store)  # readers allocate nothing


def test_trajectory_store_on_a_full_disk(tmp_path, monkeypatch):
    traj = np.arange(2 * N, dtype=np.float64).reshape(N, 2)
    _full_disk_after(monkeypatch, 1)
    with pytest.raises(DiskFullError, match="traj"):
        TrajectoryStore(tmp_path / "traj").write(traj, ["a", "b"], {})
    assert _store_files(tmp_path / "traj") == []
    monkeypatch.undo()
    TrajectoryStore(tmp_path / "traj").write(traj, ["a", "b"], {})
    np.testing.assert_array_equal(TrajectoryStore(tmp_path / "traj").read()[0], traj)


def test_gradient_pass_on_a_full_disk_fails_before_any_row_then_resumes_identically(warm_run, tmp_path, monkeypatch):
    from lightning_less.data.datamodule import InstructionDataModule
    from lightning_less.passes.gradient_features import GradientDumpLoop

    def run(out):
        data = InstructionDataModule(predict_files=[warm_run["targets"]], tokenizer_name_or_path=warm_run["model"],
                                     eval_batch_size=2)
        return GradientDumpLoop(snapshots=warm_run["snapshots"], output_dir=str(out), feature="sgd", dims=[16],
                                projector="sparse_jl", store_dtype="float32",
                                trainer_kwargs={"enable_progress_bar": False, "enable_model_summary": False}).run(data)

    reference = run(tmp_path / "reference")
    _full_disk_after(monkeypatch, 1)
    with pytest.raises(DiskFullError, match=str(tmp_path / "full")):
        run(tmp_path / "full")
    assert not (tmp_path / "full" / "manifest.json").exists()
    monkeypatch.undo()
    again = run(tmp_path / "full")
    for snap in reference.snapshots:
        np.testing.assert_array_equal(np.asarray(again.features(snap, 16)), np.asarray(reference.features(snap, 16)))


def test_disk_filling_up_at_the_manifest_leaves_nothing(tmp_path, monkeypatch):
    from lightning_less.stores import datastore

    def full(path, obj, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(datastore, "write_json_atomic", full)
    with pytest.raises(DiskFullError, match="manifest.json"):
        GradientDatastore.create(tmp_path / "s", MANIFEST, SNAPSHOTS, DIMS, N)
    assert _store_files(tmp_path / "s") == []
