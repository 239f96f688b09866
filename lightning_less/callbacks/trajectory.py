"""S2L loss trajectories (ALGORITHMS.md 2): each example's response-token mean loss at each checkpoint.

* :func:`record_losses` computes the per-example losses of a model over a dataset in
  padded batches (one forward per batch, never one per example).
* :class:`LossTrajectoryCallback` records them during the proxy's own training at chosen
  optimizer steps (and/or epoch ends), so no second pass over saved checkpoints is needed.
* :class:`TrajectoryStore` keeps ``trajectories.npy`` [n, T] (NaN = not recorded or no
  defined loss) with a manifest, written atomically; stores built on different data or
  steps refuse to be mixed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from lightning_less.modules.losses import per_example_loss


@torch.no_grad()
def record_losses(model: torch.nn.Module, loader: DataLoader, n: int, device: torch.device | str | None = None) -> np.ndarray:
    """Per-example token-mean losses ``[n]`` (NaN for indices the loader does not cover)."""
    was_training = model.training
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    out = np.full(n, np.nan, dtype=np.float64)
    try:
        for batch in loader:
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
            losses = per_example_loss(logits, batch["labels"].to(device))
            out[batch["index"].numpy()] = losses.double().cpu().numpy()
    finally:
        model.train(was_training)
    return out


class TrajectoryStore:
    """``trajectories.npy`` [n_examples, n_checkpoints] + ``manifest.json`` in a directory."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def write(self, trajectories: np.ndarray, manifest: dict[str, Any], overwrite: bool = False) -> None:
        if (self.path / "manifest.json").exists() and not overwrite:
            raise FileExistsError(f"{self.path} already holds a trajectory store; pass overwrite=True to replace it")
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / ".trajectories.npy.tmp"
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(trajectories, dtype=np.float64))
        os.replace(tmp, self.path / "trajectories.npy")
        mtmp = self.path / ".manifest.json.tmp"
        mtmp.write_text(json.dumps({**manifest, "shape": list(np.shape(trajectories)), "complete": True}, indent=2))
        os.replace(mtmp, self.path / "manifest.json")

    def read(self) -> tuple[np.ndarray, dict[str, Any]]:
        manifest_path = self.path / "manifest.json"
        if not manifest_path.exists():
            raise FileNotFoundError(f"{self.path} is not a complete trajectory store ({manifest_path} is missing)")
        manifest = json.loads(manifest_path.read_text())
        return np.load(self.path / "trajectories.npy"), manifest

    @staticmethod
    def check_compatible(a: dict, b: dict, keys: Sequence[str] = ("data", "n_examples")) -> None:
        diffs = [f"{k}: {a.get(k)!r} != {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]
        if diffs:
            raise ValueError("incompatible trajectory stores: " + "; ".join(diffs))


class LossTrajectoryCallback(Callback):
    """Record every example's loss at chosen optimizer steps of the proxy's training.

    Args:
        output_dir: the trajectory store written when training ends.
        every_n_steps: record after every n optimizer steps (0: never by steps).
        at_epoch_end: also record at each training epoch end.
        batch_size: batch size of the loss pass (defaults to the datamodule's eval batch size).
    """

    def __init__(self, output_dir: str, every_n_steps: int = 0, at_epoch_end: bool = True, batch_size: int | None = None,
                 overwrite: bool = False) -> None:
        if every_n_steps < 0:
            raise ValueError("every_n_steps must be >= 0")
        self.output_dir = output_dir
        self.every_n_steps = every_n_steps
        self.at_epoch_end = at_epoch_end
        self.batch_size = batch_size
        self.overwrite = overwrite
        self.columns: list[np.ndarray] = []
        self.steps: list[int] = []

    def _loader(self, trainer: pl.Trainer) -> tuple[DataLoader, int]:
        from lightning_less.data.datamodule import InstructionCollator

        dm = trainer.datamodule
        ds = dm._dataset("train")
        # Every record of the pool (not only a sampled fraction) in a deterministic order.
        size = self.batch_size or dm.eval_batch_size
        loader = DataLoader(ds, batch_size=size, shuffle=False, collate_fn=InstructionCollator(dm.tokenizer.pad_token_id, dm.padding_side))
        return loader, len(ds.records)

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.steps and self.steps[-1] == trainer.global_step:
            return
        loader, n = self._loader(trainer)
        model = getattr(pl_module, "model", pl_module)
        self.columns.append(record_losses(model, loader, n, pl_module.device))
        self.steps.append(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step > 0 and trainer.global_step % self.every_n_steps == 0:
            self._record(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.at_epoch_end:
            self._record(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or not self.columns:
            return
        ds = trainer.datamodule._dataset("train")
        from lightning_less.data.records import files_fingerprint

        manifest = {"kind": "loss_trajectories", "steps": self.steps, "n_examples": len(ds.records),
                    "data": files_fingerprint(ds.files), "max_length": ds.max_length,
                    "undefined_indices": [r.index for r in ds.dropped]}
        TrajectoryStore(self.output_dir).write(np.stack(self.columns, axis=1), manifest, overwrite=self.overwrite)
        rank_zero_info(f"loss trajectories at steps {self.steps} written to {self.output_dir}")

    def state_dict(self) -> dict[str, Any]:
        return {"columns": [c.tolist() for c in self.columns], "steps": list(self.steps)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.columns = [np.asarray(c, dtype=np.float64) for c in state_dict["columns"]]
        self.steps = list(state_dict["steps"])
