"""Shared building blocks of the fault tests: small stores, and damage done to their files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lightning_less.stores.datastore import GradientDatastore
from tests.helpers import fill_store

N = 12
SNAPSHOTS = ["epoch_000", "epoch_001"]
DIMS = [8, 4]
MANIFEST = {"feature_kind": "adam", "projector": {"kind": "sparse_jl", "seed": 0}}


def rows(snapshot: str, dim: int, index: np.ndarray) -> np.ndarray:
    """Deterministic, distinct, nonzero rows (so a zero-filled row is never mistaken for data)."""
    table = np.random.default_rng([SNAPSHOTS.index(snapshot), dim]).uniform(0.5, 2.0, (N, dim)).astype(np.float32)
    return table[index]


def fill(store: GradientDatastore, index: np.ndarray) -> None:
    fill_store(store, index, rows)


def make_store(path: Path, complete: bool = True, manifest: dict | None = None, **kw) -> Path:
    """A store of N rows, every row written (and finalized unless ``complete=False``); closed."""
    store = GradientDatastore.create(path, manifest or MANIFEST, SNAPSHOTS, DIMS, N, **{"dtype": "float32", **kw})
    fill(store, np.arange(N))
    if complete:
        store.finalize()
    store.close()
    return path


def truncate(path: Path, keep: int) -> None:
    """Cut a file to ``keep`` bytes (negative: drop that many from the end)."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(keep if keep >= 0 else size + keep)


def run_script(code: str, tmp_path: Path, name: str = "script.py", timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python process with this checkout first on the path."""
    script = tmp_path / name
    script.write_text(textwrap.dedent(code))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                       os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(name, size)``: a real file system of ``size`` bytes (a tmpfs) mounted at ``tmp_path / name``.

    The disk fills for real, whatever code writes to it (numpy, csv, safetensors' Rust
    writer...), which monkeypatching ``os.posix_fallocate`` cannot do. Mounting needs root
    (CAP_SYS_ADMIN); the test is skipped where it is not allowed. Unmounted afterwards.
    """
    mounted: list[Path] = []

    def mount(name: str, size: int) -> Path:
        path = tmp_path / name
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def umask_022():
    """A known umask for the test (process-wide), restored afterwards."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def warmup(tmp_path: Path, callbacks: list, epochs: int = 2, module=None, n_records: int = 8, **trainer_kw):
    """A tiny LoRA warmup fit (builtin model); returns ``(module, trainer)``."""
    import lightning.pytorch as pl

    from lightning_less.data.datamodule import InstructionDataModule
    from lightning_less.modules.lora import LoRAInstructionTuningModule
    from tests.helpers import qa_records, write_jsonl

    pool = write_jsonl(tmp_path / "warmup_pool.jsonl", qa_records(n_records))
    pl.seed_everything(0, verbose=False)
    module = module or LoRAInstructionTuningModule(lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=1e-3,
                                                   warmup_ratio=0.0, scheduler="constant", exact_match=False)
    data = InstructionDataModule(train_files=[str(pool)], tokenizer_name_or_path="builtin:tiny-llama", batch_size=4)
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks, **trainer_kw)
    trainer.fit(module, datamodule=data)
    return module, trainer
