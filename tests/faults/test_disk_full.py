"""A full disk is an error when a store is created, naming the path and the bytes needed; never a SIGBUS mid-pass.

Store files used to be sparse (numpy's ``open_memmap(mode="w+")``): the gradient pass then
died with SIGBUS (rc 135) when a write through the memmap found no free block. Now every
block is allocated at create time (``os.posix_fallocate``), nothing is left behind when that
fails, and the run after space was freed gives the same store as if the disk had never filled.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lightning_less.errors import InputError, LessError
from lightning_less.stores.datastore import GradientDatastore
from lightning_less.stores.files import DiskFullError
from lightning_less.stores.trajectory import TrajectoryStore
from tests.faults.conftest import DIMS, MANIFEST, N, SNAPSHOTS, fill, make_store
from tests.helpers import qa_records, run_two_ranks, write_jsonl

ROOT = Path(__file__).resolve().parents[2]

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
    assert not (tmp_path / "s").exists()  # "nothing was kept": no manifest, no arrays, no empty directory

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


# ---------------------------------------------------------------- real small disks (a tmpfs; needs root)
def test_store_on_a_real_full_disk_keeps_nothing_not_even_its_directory(small_disk):
    disk = small_disk("disk", 64 * 1024)
    with pytest.raises(DiskFullError) as err:
        GradientDatastore.create(disk / "store", MANIFEST, SNAPSHOTS, [4096], 64, dtype="float32")
    message = str(err.value)
    assert str(disk / "store") in message and "nothing was kept" in message and "Free space" in message, message
    assert sorted(p.name for p in disk.iterdir()) == [".store.lock"]  # the lock file beside it, nothing else
    existing = disk / "mine"
    existing.mkdir()  # a directory the user made stays, empty as it was
    with pytest.raises(DiskFullError):
        GradientDatastore.create(existing, MANIFEST, SNAPSHOTS, [4096], 64, dtype="float32")
    assert existing.is_dir() and not any(existing.iterdir())


def _cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    env.pop("LIGHTNING_LESS_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "lightning_less.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_select_onto_a_full_disk_exits_2_naming_the_output_and_keeps_nothing(small_disk, tmp_path):
    """The reviewer's case: about 100 KB free; scores.csv alone is larger. Was: exit 1, OSError traceback."""
    pool = write_jsonl(tmp_path / "pool.jsonl", qa_records(3000))
    disk = small_disk("disk", 100 * 1024)
    out = disk / "selection"
    done = _cli("select", "--method", "random", "--pool", str(pool), "--fraction", "0.5", "--output", str(out))
    assert done.returncode == 2, done.stderr
    text = " ".join(done.stderr.split())
    assert f"error: not enough disk space to write the selection {out} (No space left on device)" in text, done.stderr
    assert "are free there. Free space or choose another location, then select again" in text
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert sorted(p.name for p in disk.iterdir()) == [".selection.lock"]  # no selection, no temporary directory
    # Space freed (here: a larger disk), the same selection is written.
    from lightning_less.selection.runner import run_selection

    bigger = small_disk("bigger", 4 << 20)
    run_selection("random", [str(pool)], None, bigger / "selection", fraction=0.5)
    assert (bigger / "selection" / "manifest.json").is_file()


def test_warmup_onto_a_full_disk_names_the_snapshot_and_leaves_the_set_unfinished(small_disk, tmp_path):
    """Was: exit 1 with a SafetensorError traceback from safetensors' writer."""
    from lightning_less.callbacks.snapshot import GradientFeatureCallback, list_snapshots
    from tests.faults.conftest import warmup

    disk = small_disk("disk", 16 * 1024)  # the lock file and the plan fit, a snapshot does not
    snaps = disk / "snaps"
    with pytest.raises(DiskFullError) as err:
        warmup(tmp_path, [GradientFeatureCallback(str(snaps))], epochs=2)
    message = str(err.value)
    assert message.startswith(f"not enough disk space to write the snapshot of epoch 0 {snaps / 'epoch_000'} "), message
    assert "it needs" in message and "then rerun the warmup with overwrite=True" in message
    assert sorted(p.name for p in snaps.iterdir()) == ["snapshots.json"]  # no snapshot, no temporary directory
    with pytest.raises(InputError, match=r"did not finish: \['epoch_000', 'epoch_001'\] missing"):
        list_snapshots(snaps)


def test_the_fit_command_onto_a_full_disk_exits_2(small_disk, tmp_path, capsys, monkeypatch):
    from lightning_less.cli import main

    disk = small_disk("disk", 16 * 1024)
    pool = write_jsonl(tmp_path / "pool.jsonl", qa_records(8))
    config = tmp_path / "fit.yaml"
    config.write_text(textwrap.dedent(f"""\
        trainer: {{accelerator: cpu, max_epochs: 1, logger: false, enable_checkpointing: false,
                   enable_progress_bar: false, enable_model_summary: false,
                   callbacks: [{{class_path: lightning_less.GradientFeatureCallback,
                                init_args: {{dirpath: {disk / 'snaps'}}}}}]}}
        model: {{class_path: lightning_less.LoRAInstructionTuningModule,
                 init_args: {{model_name_or_path: builtin:tiny-llama, lora_r: 4, exact_match: false}}}}
        data: {{class_path: lightning_less.InstructionDataModule, init_args: {{train_files: [{pool}], batch_size: 4}}}}
        """))
    monkeypatch.delenv("LIGHTNING_LESS_DEBUG", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(config)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err and "SafetensorError" not in err, err
    text = " ".join(err[err.index("error:"):].split())  # the last thing written, after Lightning's own lines
    assert text.startswith(f"error: not enough disk space to write the snapshot of epoch 0 "
                           f"{disk / 'snaps' / 'epoch_000'} (No space left on device): it needs "), err


def test_two_process_warmup_onto_a_full_disk_stops_both_ranks_with_the_same_error(small_disk, tmp_path):
    """Rank 0 writes the snapshot; its disk-full error reaches rank 1 too, which used to die at the barrier with
    gloo's "Connection closed by peer" (or wait there until a timeout)."""
    disk = small_disk("disk", 16 * 1024)
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        from lightning_less.callbacks.snapshot import GradientFeatureCallback
        from lightning_less.stores.files import DiskFullError
        from tests.faults.conftest import warmup
        from pathlib import Path
        torch.set_num_threads(1)
        try:
            warmup(Path({str(tmp_path)!r}), [GradientFeatureCallback({str(disk / 'snaps')!r})], epochs=2,
                   accelerator="cpu", devices=2, strategy="ddp")
        except DiskFullError as err:
            print("STOPPED:", " ".join(str(err).split()))
    """))
    outs = run_two_ranks(script)
    stopped = [next((line for line in out.splitlines() if line.startswith("STOPPED:")), None) for out in outs]
    assert stopped[0] is not None and stopped[0] == stopped[1], outs
    assert f"the snapshot of epoch 0 {disk / 'snaps' / 'epoch_000'}" in stopped[0]
    assert sorted(p.name for p in (disk / "snaps").iterdir()) == ["snapshots.json"]
