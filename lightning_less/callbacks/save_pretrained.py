"""Save ``save_pretrained`` checkpoints on a step schedule (for the S2L trajectory pass afterwards)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_less.callbacks.schedule import _Schedule, step_dirname

CHECKPOINT_INFO = "checkpoint.json"  # written next to the weights


class SavePretrainedCallback(_Schedule, Callback):
    """Save the trained model (``save_pretrained``: full model or PEFT adapter) on a step schedule.

    Writes ``<dirpath>/step_XXXXXX/`` (+ ``checkpoint.json`` with ``global_step`` and
    ``epoch``) from rank 0, for :class:`LossTrajectoryModule` afterwards (the S2L
    reference saves a proxy checkpoint every 500 steps).

    Args:
        dirpath: directory receiving one subdirectory per saved step.
        every_n_steps: save after every n optimizer steps (0: never by steps).
        steps: also save after these optimizer steps.
        at_epoch_end: also save at each training epoch end.
        save_tokenizer: also save the LightningModule's ``tokenizer`` (if it has one) into each dir.
    """

    def __init__(self, dirpath: str, every_n_steps: int = 0, steps: list[int] | None = None, at_epoch_end: bool = False,
                 save_tokenizer: bool = True) -> None:
        self._init_schedule(every_n_steps, steps, at_epoch_end)
        self.dirpath = Path(dirpath)
        self.save_tokenizer = save_tokenizer
        self.saved: list[int] = []

    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        if self.saved and self.saved[-1] == step:
            return
        self.saved.append(step)
        if not trainer.is_global_zero:
            return
        path = self.dirpath / step_dirname(step)
        model = getattr(pl_module, "model", pl_module)
        model.save_pretrained(str(path))
        tokenizer = getattr(pl_module, "tokenizer", None) if self.save_tokenizer else None
        if tokenizer is not None:
            tokenizer.save_pretrained(str(path))
        (path / CHECKPOINT_INFO).write_text(json.dumps({"global_step": step, "epoch": trainer.current_epoch}) + "\n")

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._due_at_step(trainer.global_step):
            self._save(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.at_epoch_end:
            self._save(trainer, pl_module)
