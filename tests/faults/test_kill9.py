"""``kill -9`` at three points (a gradient pass mid-batch, a snapshot half-written, a selection half-published),
then a rerun: the result is byte-identical to an uninterrupted run, or the rerun stops with a clear error.

The process kills itself with SIGKILL at an exact point (a patched library function), which
is what an outside ``kill -9`` there does: no handler, no ``finally``, no flush beyond what
was already on its way to the file.
"""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest

from lightning_less.callbacks.snapshot import GradientFeatureCallback, list_snapshots, load_snapshot
from lightning_less.data.records import read_records
from lightning_less.errors import InputError, MissingInputError
from lightning_less.selection.budget import budget_info
from lightning_less.selection.outputs import SELECTION_FILES, read_selection, write_selection
from lightning_less.stores.datastore import GradientDatastore
from tests.faults.conftest import run_script, warmup
from tests.helpers import qa_records, write_jsonl

KILL = "import os, signal\ndef die():\n    os.kill(os.getpid(), signal.SIGKILL)\n"


def _killed(code: str, tmp_path, name: str) -> None:
    done = run_script(KILL + code, tmp_path, name=f"killed_{name}.py")
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------ gradient pass
PASS = """
from lightning_less.data.datamodule import InstructionDataModule
from lightning_less.passes.gradient_features import GradientDumpLoop
data = InstructionDataModule(predict_files=[{pool!r}], tokenizer_name_or_path={model!r}, eval_batch_size=3)
GradientDumpLoop(snapshots={snaps!r}, output_dir={out!r}, feature="adam", dims=[16, 8], projector="trak_basic",
                 store_dtype="float32", trainer_kwargs=dict(enable_progress_bar=False, enable_model_summary=False)).run(data)
"""


def _run_pass(run, out):
    """What :data:`PASS` runs, in this process."""
    from lightning_less.data.datamodule import InstructionDataModule
    from lightning_less.passes.gradient_features import GradientDumpLoop

    data = InstructionDataModule(predict_files=[run["pool"]], tokenizer_name_or_path=run["model"], eval_batch_size=3)
    GradientDumpLoop(snapshots=run["snapshots"], output_dir=str(out), feature="adam", dims=[16, 8], projector="trak_basic",
                     store_dtype="float32", trainer_kwargs=dict(enable_progress_bar=False, enable_model_summary=False)).run(data)


def test_gradient_pass_killed_mid_batch_resumes_byte_identical(warm_run, tmp_path):
    args = {"pool": warm_run["pool"], "model": warm_run["model"], "snaps": warm_run["snapshots"]}
    # The 5th mark_done: batch 3's rows are written for every dim of the first snapshot, but not marked done.
    _killed("""
from lightning_less.stores.datastore import GradientDatastore
real, calls = GradientDatastore.mark_done, []
def mark_done(self, snapshot, indices):
    calls.append(snapshot)
    if len(calls) == 5:
        die()
    return real(self, snapshot, indices)
GradientDatastore.mark_done = mark_done
""" + PASS.format(out=str(tmp_path / "killed"), **args), tmp_path, "pass")
    partial = GradientDatastore.open(tmp_path / "killed")
    assert not partial.is_complete()
    assert partial.done_mask("epoch_000").sum() == partial.done_mask("epoch_001").sum() == 6  # two batches of 3
    with pytest.raises(RuntimeError, match="not complete"):
        partial.features("epoch_000", 16)

    # The rerun resumes (the killed writer's lock went with it) and an uninterrupted run gives the same bytes.
    _run_pass(warm_run, tmp_path / "killed")
    _run_pass(warm_run, tmp_path / "reference")
    resumed, reference = _files(tmp_path / "killed"), _files(tmp_path / "reference")
    assert sorted(resumed) == sorted(reference)
    for name in reference:
        if name != "manifest.json":  # its "created" time differs
            assert resumed[name] == reference[name], name
    assert GradientDatastore.open(tmp_path / "killed").is_complete()


# --------------------------------------------------------------------------- snapshot
WARMUP = """
from lightning_less.callbacks.snapshot import GradientFeatureCallback
from tests.faults.conftest import warmup
from pathlib import Path
warmup(Path({root!r}), [GradientFeatureCallback({snaps!r})], epochs=3)
"""


def test_warmup_killed_while_writing_a_snapshot(tmp_path):
    snaps = tmp_path / "snaps"
    # Killed with epoch_001 fully written in its temp dir, just before the rename that publishes it.
    _killed("""
from lightning_less.callbacks import snapshot
real = snapshot.apply_umask
def apply_umask(path):
    real(path)
    if "epoch_001" in str(path):
        die()
snapshot.apply_umask = apply_umask
""" + WARMUP.format(root=str(tmp_path), snaps=str(snaps)), tmp_path, "warmup")
    assert [p.name for p in snaps.glob("epoch_*")] == ["epoch_000"]
    assert len(list(snaps.glob(".epoch_001-*"))) == 1  # the half-published snapshot, hidden
    with pytest.raises(InputError, match=r"did not finish: \['epoch_001', 'epoch_002'\] missing"):
        list_snapshots(snaps)

    # A plain rerun stops at once (it would write epoch_000 again); with overwrite it makes the whole set.
    with pytest.raises(FileExistsError, match="epoch_000"):
        warmup(tmp_path, [GradientFeatureCallback(str(snaps))], epochs=3)
    warmup(tmp_path, [GradientFeatureCallback(str(snaps), overwrite=True)], epochs=3)
    warmup(tmp_path / "ref", [GradientFeatureCallback(str(tmp_path / "reference"))], epochs=3)
    assert not list(snaps.glob(".epoch_*"))  # the killed run's temp dir is gone
    got, want = list_snapshots(snaps), list_snapshots(tmp_path / "reference")
    assert [p.name for p in got] == [p.name for p in want] == ["epoch_000", "epoch_001", "epoch_002"]
    for a, b in zip(got, want):
        sa, sb = load_snapshot(a), load_snapshot(b)
        assert sa.lr == sb.lr and sa.step == sb.step
        for name in sa.param_names:
            assert sa.exp_avg[name].equal(sb.exp_avg[name]) and sa.exp_avg_sq[name].equal(sb.exp_avg_sq[name])
        assert (a / "adapter_model.safetensors").read_bytes() == (b / "adapter_model.safetensors").read_bytes()


# -------------------------------------------------------------------------- selection
SELECT = """
from lightning_less.data.records import read_records
from lightning_less.selection.budget import budget_info
from lightning_less.selection.outputs import write_selection
import numpy as np
records = read_records([{pool!r}])
write_selection({out!r}, records, [5, 1, 3], np.linspace(0, 1, len(records)), "less", budget_info(len(records), count=3),
                seed=0, overwrite={overwrite})
"""
KILL_POINTS = {
    # before anything is published: the lines are written into the temp dir only
    "before publishing": """
from lightning_less.selection import outputs
real = outputs._write_files
def _write_files(tmp, *args):
    real(tmp, *args)
    die()
outputs._write_files = _write_files
""",
    # scores.csv renamed into place, selected.jsonl and the manifest not
    "between the renames": """
real, moved = os.replace, []
def replace(src, dst):
    real(src, dst)
    moved.append(dst)
    if len(moved) == 1:
        die()
os.replace = replace
""",
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_selection_killed_while_written(tmp_path, point):
    pool = write_jsonl(tmp_path / "pool.jsonl", qa_records(7))
    records = read_records([pool])
    out = tmp_path / "sel"
    _killed(KILL_POINTS[point] + SELECT.format(pool=str(pool), out=str(out), overwrite=False), tmp_path, "select")
    assert len(list(tmp_path.glob(".sel.tmp-*"))) == 1  # the killed writer's temp dir
    assert not (out / "manifest.json").exists()
    with pytest.raises(MissingInputError, match="manifest.json is missing"):
        read_selection(out, records)

    if point == "between the renames":  # a half-published selection: named, and replaced only when asked
        assert [n for n in SELECTION_FILES if (out / n).exists()] == ["scores.csv"]
        with pytest.raises(FileExistsError, match="an earlier write was interrupted"):
            write_selection(out, records, [5, 1, 3], None, "less", budget_info(7, count=3), seed=0)
    rerun = run_script(SELECT.format(pool=str(pool), out=str(out), overwrite=point != "before publishing"), tmp_path,
                       name="rerun.py")
    rerun.check_returncode()
    run_script(SELECT.format(pool=str(pool), out=str(tmp_path / "reference"), overwrite=False), tmp_path,
               name="reference.py").check_returncode()
    assert _files(out) == _files(tmp_path / "reference")  # all three files, byte for byte
    assert not list(tmp_path.glob(".sel.tmp-*"))
    assert read_selection(out, records).selected.tolist() == [5, 1, 3]
    assert json.loads((out / "manifest.json").read_text())["n_selected"] == 3


# ---------------------------------------------------------------------- store creation
def test_store_creation_killed_halfway_is_rebuilt_by_the_rerun(tmp_path):
    from tests.faults.conftest import DIMS, MANIFEST, N, SNAPSHOTS, make_store

    # Killed while allocating its third array: arrays on disk, no manifest.
    _killed(f"""
from lightning_less.stores import datastore
real, calls = datastore.allocate_npy, []
def allocate_npy(*args):
    calls.append(args)
    if len(calls) == 3:
        die()
    real(*args)
datastore.allocate_npy = allocate_npy
datastore.GradientDatastore.create({str(tmp_path / "s")!r}, {MANIFEST!r}, {SNAPSHOTS!r}, {DIMS!r}, {N}, dtype="float32")
""", tmp_path, "create")
    assert (tmp_path / "s" / "features").is_dir() and not (tmp_path / "s" / "manifest.json").exists()
    with pytest.raises(MissingInputError):
        GradientDatastore.open(tmp_path / "s")  # never a store until its manifest exists
    make_store(tmp_path / "s")  # the rerun replaces the leftovers (they are all the store's own)
    make_store(tmp_path / "reference")
    assert {k: v for k, v in _files(tmp_path / "s").items() if k != "manifest.json"} == \
        {k: v for k, v in _files(tmp_path / "reference").items() if k != "manifest.json"}
