"""S2L's proxy: train a small model on the whole pool, recording loss trajectories at each epoch end."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from lightning_less.callbacks.loss_trajectory import LossTrajectoryCallback
from lightning_less.data.datamodule import InstructionDataModule
from lightning_less.modules.lora import LoRAInstructionTuningModule
from lightning_less.stores.trajectory import TrajectoryStore, check_trajectory_data


def s2l_trajectories(model_name_or_path: str, pool_files: Sequence[str], output: Path, max_length: int, seed: int,
                     epochs: int = 3, learning_rate: float = 2e-3, batch_size: int = 16, trainer: dict | None = None) -> np.ndarray:
    """Train a proxy on the whole pool, recording loss trajectories at each epoch end (docs/algorithms.md §2.1)."""
    store = TrajectoryStore(output)
    if (output / "manifest.json").exists():
        traj, manifest = store.read()
        try:
            check_trajectory_data(manifest, pool_files)
        except ValueError as e:
            raise ValueError(f"{output}: {e}; remove it or choose another directory") from None
        rank_zero_info(f"[skip] S2L trajectories: {output} exists")
        return traj
    pl.seed_everything(seed, verbose=False)
    module = LoRAInstructionTuningModule(model_name_or_path=model_name_or_path, use_lora=False, learning_rate=learning_rate,
                                         scheduler="cosine", warmup_ratio=0.03, seed=seed, exact_match=False)
    data = InstructionDataModule(train_files=list(pool_files), tokenizer_name_or_path=model_name_or_path,
                                 max_length=max_length, batch_size=batch_size, seed=seed)
    callback = LossTrajectoryCallback(str(output), every_n_steps=0, at_epoch_end=True, batch_size=64)
    t = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_model_summary=False,
                   callbacks=[callback], **(trainer or {}))
    t.fit(module, datamodule=data)
    return store.read()[0]
