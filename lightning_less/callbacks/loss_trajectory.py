"""Record S2L loss trajectories during the proxy's own training (a Lightning callback)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_less.callbacks.schedule import _Schedule, step_dirname
from lightning_less.data.batching import LengthGroupedBatchSampler
from lightning_less.modules.losses import record_losses
from lightning_less.stores.trajectory import LOSS_DEFINITION, TrajectoryStore


class LossTrajectoryCallback(_Schedule, Callback):
    """Record every pool example's loss at chosen optimizer steps of the proxy's own training.

    The pool is every record of the datamodule's ``train_files`` (not only a sampled
    fraction), tokenized as for training, batched by length with its ``eval_batch_size`` (or
    ``batch_size``) and ``padding_side``. Under DDP each rank computes every
    ``world_size``-th example and the columns are gathered. Columns are kept with the
    recorded steps in the callback's ``state_dict`` (so a run resumed from a Lightning
    checkpoint keeps them, even when pointed at another ``output_dir``; one instance per
    Trainer) and the trajectory store is written by rank 0 when training ends, named
    ``step_XXXXXX`` per recorded step.

    Args:
        output_dir: the trajectory store written when training ends.
        every_n_steps: record after every n optimizer steps (0: never by steps).
        steps: also record after these optimizer steps.
        at_epoch_end: also record at each training epoch end.
        batch_size: batch size of the loss pass (default: the datamodule's eval batch size).
        overwrite: replace an existing store at ``output_dir`` (otherwise training refuses to start).
    """

    def __init__(self, output_dir: str, every_n_steps: int = 0, at_epoch_end: bool = True, batch_size: int | None = None,
                 overwrite: bool = False, steps: list[int] | None = None) -> None:
        self._init_schedule(every_n_steps, steps, at_epoch_end)
        self.output_dir = output_dir
        self.batch_size = batch_size
        self.overwrite = overwrite
        self.columns: list[np.ndarray] = []
        self.steps: list[int] = []
        self.epochs: list[int] = []
        self._ds = None

    def _dataset(self, trainer: pl.Trainer):
        if self._ds is None:
            from lightning_less.data.datamodule import InstructionDataset

            dm = trainer.datamodule
            if dm is None or not getattr(dm, "train_files", None):
                raise RuntimeError("LossTrajectoryCallback needs an InstructionDataModule with train_files (the pool)")
            if dm.train_fraction is None and dm.train_indices is None:
                self._ds = dm._dataset("train")
            else:  # the proxy trains on a subset: trajectories still cover every record of the pool
                self._ds = InstructionDataset(dm.train_files, dm.tokenizer, max_length=dm.max_length, template=dm.template)
        return self._ds

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._ds = None  # the pool of this run's datamodule

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (Path(self.output_dir) / "manifest.json").exists() and not self.overwrite:
            raise FileExistsError(f"{self.output_dir} already holds a store; pass overwrite=True to replace it")

    @torch.no_grad()
    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from lightning_less.data.datamodule import InstructionCollator

        step = trainer.global_step
        if self.steps and self.steps[-1] == step:
            return
        ds = self._dataset(trainer)
        dm = trainer.datamodule
        # This rank's share, in batches of similar length (padding is computed, and lengths vary widely).
        share = range(trainer.global_rank, len(ds), trainer.world_size)
        batches = LengthGroupedBatchSampler(share, self.batch_size or dm.eval_batch_size, lengths=ds.lengths)
        loader = DataLoader(ds, batch_sampler=batches, collate_fn=InstructionCollator(dm.tokenizer.pad_token_id, dm.padding_side))
        model = getattr(pl_module, "model", pl_module)
        with trainer.precision_plugin.predict_step_context():
            column = record_losses(model, loader, len(ds.records), pl_module.device)
        if trainer.world_size > 1:  # rows are disjoint across ranks: fmax keeps the one non-NaN value
            gathered = trainer.strategy.all_gather(torch.from_numpy(column).to(pl_module.device))
            column = torch.stack(list(gathered)).nan_to_num(nan=float("-inf")).amax(0).cpu().numpy()
            column[np.isneginf(column)] = np.nan
        dropped = np.asarray([r.index for r in ds.dropped], dtype=np.int64)
        column[dropped] = np.nan
        self.columns.append(column)
        self.steps.append(step)
        self.epochs.append(trainer.current_epoch)

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._due_at_step(trainer.global_step):
            self._record(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.at_epoch_end:
            self._record(trainer, pl_module)

    @override
    def on_train_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or not self.columns:
            return
        ds = self._dataset(trainer)
        names = [step_dirname(s) for s in self.steps]
        hparams = getattr(pl_module, "hparams", None) or {}
        manifest = {
            "loss": LOSS_DEFINITION,
            "source": "training",
            "model": hparams.get("model_name_or_path"),
            "checkpoints": [{"name": n, "global_step": s, "epoch": e} for n, s, e in zip(names, self.steps, self.epochs)],
            "steps": list(self.steps),
            "data": ds.data_fingerprint(),
            "excluded_ids": [r.id for r in ds.dropped],
        }
        TrajectoryStore(self.output_dir).write(np.stack(self.columns, axis=1), names, manifest, overwrite=self.overwrite)
        rank_zero_info(f"loss trajectories at steps {self.steps} written to {self.output_dir}")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"columns": [torch.from_numpy(c) for c in self.columns], "steps": list(self.steps), "epochs": list(self.epochs)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.columns = [np.asarray(c, dtype=np.float64) for c in state_dict["columns"]]
        self.steps = [int(s) for s in state_dict["steps"]]
        self.epochs = [int(e) for e in state_dict.get("epochs", [-1] * len(self.steps))]

