"""One writer at a time: a second writer of a store, a selection or a snapshot directory fails at once, naming the first.

Without the lock, a pass started with ``overwrite=True`` while another one runs rewrites
the manifest under the first one's rows (a manifest saying seed 1 over seed-0 features).
The holder here is a real second process; ``kill -9`` of it frees the lock (the kernel
drops an ``flock`` with its holder), so a lock file left behind never blocks anyone.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest

from lightning_less.callbacks.snapshot import GradientFeatureCallback
from lightning_less.data.records import read_records
from lightning_less.selection.budget import budget_info
from lightning_less.selection.outputs import SELECTION_FILES, read_selection, write_selection
from lightning_less.stores.datastore import GradientDatastore
from lightning_less.stores.lock import DirectoryLock, LockedError, lock_path_for
from tests.faults.conftest import DIMS, MANIFEST, N, SNAPSHOTS, fill
from tests.helpers import qa_records, write_jsonl

SEED1 = {**MANIFEST, "projector": {**MANIFEST["projector"], "seed": 1}}


class Holder:
    """A second process that runs ``code`` (which takes a lock), says "ready", then waits to be killed."""

    def __init__(self, code: str, tmp_path: Path) -> None:
        script = tmp_path / "holder.py"
        script.write_text(textwrap.dedent(code) + "\nprint('ready', flush=True)\nimport time\ntime.sleep(120)\n")
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
        self.proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", line + self.proc.stdout.read()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=60) == -signal.SIGKILL


@pytest.fixture
def holder(tmp_path):
    """Start a :class:`Holder`; it is killed at the end of the test whatever happens."""
    started: list[Holder] = []

    def start(code: str) -> Holder:
        started.append(Holder(code, tmp_path))
        return started[-1]

    yield start
    for h in started:
        if h.proc.poll() is None:
            h.kill9()


def _assert_names_holder(err: pytest.ExceptionInfo, pid: int) -> None:
    message = str(err.value)
    assert f"pid {pid} on {socket.gethostname()} since 20" in message, message
    assert "holder.py" in message  # the holder's command line


def test_second_store_writer_fails_at_once_and_changes_nothing(tmp_path, holder):
    store = tmp_path / "pool"
    other = holder(f"""
        import numpy as np
        from lightning_less.stores.datastore import GradientDatastore
        s = GradientDatastore.create({str(store)!r}, {MANIFEST!r}, {SNAPSHOTS!r}, {DIMS!r}, {N})
        s.write("epoch_000", 8, [0], np.ones((1, 8), np.float32))  # a pass in progress
    """)
    before = (store / "manifest.json").read_bytes()
    # The run that used to leave "seed 1" in the manifest over seed-0 rows:
    with pytest.raises(LockedError) as err:
        GradientDatastore.create(store, SEED1, SNAPSHOTS, DIMS, N, overwrite=True)
    _assert_names_holder(err, other.pid)
    with pytest.raises(LockedError):
        GradientDatastore.open(store, mode="r+")
    assert (store / "manifest.json").read_bytes() == before
    assert GradientDatastore.open(store).manifest["projector"]["seed"] == 0  # readers are not blocked

    other.kill9()
    assert lock_path_for(store).exists()  # left behind by the killed holder, and harmless:
    fresh = GradientDatastore.create(store, SEED1, SNAPSHOTS, DIMS, N, overwrite=True)
    assert fresh.manifest["projector"]["seed"] == 1 and fresh.pending().size == N


def test_second_handle_in_the_same_process_is_refused_until_closed(tmp_path):
    first = GradientDatastore.create(tmp_path / "s", MANIFEST, SNAPSHOTS, DIMS, N)
    with pytest.raises(LockedError, match="this process"):
        GradientDatastore.create(tmp_path / "s", MANIFEST, SNAPSHOTS, DIMS, N)
    fill(first, np.arange(N))
    first.finalize()  # finished: the lock goes with it
    GradientDatastore.create(tmp_path / "s", SEED1, SNAPSHOTS, DIMS, N, overwrite=True).close()
    with DirectoryLock(tmp_path / "s", "test"):
        pass  # and close() released that one


def test_second_selection_writer_fails_at_once(tmp_path, holder):
    pool = write_jsonl(tmp_path / "pool.jsonl", qa_records(6))
    records = read_records([pool])
    out = tmp_path / "sel"
    other = holder(f"""
        import time
        from lightning_less.data.records import read_records
        from lightning_less.selection import outputs
        from lightning_less.selection.budget import budget_info

        def slow(*args):  # a writer caught in the middle of writing
            print("ready", flush=True)
            time.sleep(120)

        outputs._write_files = slow
        outputs.write_selection({str(out)!r}, read_records([{str(pool)!r}]), [0, 1], None, "random",
                                budget_info(6, count=2), seed=0)
    """)
    with pytest.raises(LockedError) as err:
        write_selection(out, records, [2, 3], None, "random", budget_info(6, count=2), seed=1, overwrite=True)
    _assert_names_holder(err, other.pid)
    assert not [name for name in SELECTION_FILES if (out / name).exists()]
    other.kill9()
    write_selection(out, records, [2, 3], None, "random", budget_info(6, count=2), seed=1)
    assert read_selection(out, records).selected.tolist() == [2, 3]
    assert not list(tmp_path.glob(".sel.tmp-*"))  # the killed writer's temp dir was cleared


def test_second_warmup_on_the_same_snapshot_dir_fails_before_training(tmp_path, holder):
    from lightning_less.data.datamodule import InstructionDataModule
    from lightning_less.modules.lora import LoRAInstructionTuningModule

    snaps = tmp_path / "snaps"
    other = holder(f"""
        from lightning_less.stores.lock import DirectoryLock
        lock = DirectoryLock({str(snaps)!r}, "warmup snapshot").acquire()
    """)
    pool = write_jsonl(tmp_path / "pool.jsonl", qa_records(8))
    module = LoRAInstructionTuningModule(lora_r=4, lora_alpha=8, lora_dropout=0.0, exact_match=False)
    data = InstructionDataModule(train_files=[str(pool)], tokenizer_name_or_path="builtin:tiny-llama", batch_size=4)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[GradientFeatureCallback(str(snaps))])
    with pytest.raises(LockedError) as err:
        trainer.fit(module, datamodule=data)
    _assert_names_holder(err, other.pid)
    assert trainer.global_step == 0 and not list(snaps.glob("epoch_*"))
    other.kill9()
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[GradientFeatureCallback(str(snaps))])
    trainer.fit(module, datamodule=data)
    assert json.loads((snaps / "snapshots.json").read_text())["complete"] is True
