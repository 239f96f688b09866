"""S2L's proxy: train a small model on the whole pool, recording loss trajectories at each epoch end.

The proxy's trajectory store gets a ``proxy.json`` beside its manifest recording how the
proxy was trained (model, settings, max_length, seed). A store found with the same record
and the same pool is reused; one trained otherwise is refused unless ``overwrite``, so a
selection never silently uses the trajectories of another proxy.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from lightning_less.callbacks.loss_trajectory import LossTrajectoryCallback
from lightning_less.data.datamodule import InstructionDataModule
from lightning_less.errors import InputError, StaleOutputError
from lightning_less.modules.lora import LoRAInstructionTuningModule
from lightning_less.stores.trajectory import TrajectoryStore, check_trajectory_data

PROXY_FILE = "proxy.json"
PROXY_FORMAT = 1


@dataclass
class ProxySettings:
    """S2L's proxy: a model fully fine-tuned on the whole pool, its losses recorded at each epoch end."""

    epochs: int = 3
    """Training epochs; one trajectory point per epoch end."""
    learning_rate: float = 2e-3
    """Peak learning rate (cosine schedule, 3% warmup)."""
    batch_size: int = 16
    """Training batch size."""


def proxy_dir(selection_dir: str | os.PathLike) -> Path:
    """Where the proxy of the S2L selection ``selection_dir`` records its trajectories: ``<selection_dir>_proxy``."""
    selection_dir = Path(selection_dir)
    return selection_dir.parent / f"{selection_dir.name}_proxy"


def _record(model: str, max_length: int, seed: int, settings: ProxySettings) -> dict[str, Any]:
    return {"format": PROXY_FORMAT, "model": model, "max_length": max_length, "seed": seed, "settings": asdict(settings)}


def proxy_stale_reason(output: Path, model: str, pool_files: Sequence[str], max_length: int, seed: int,
                       settings: ProxySettings) -> str | None:
    """Why the proxy store ``output`` cannot be reused for this proxy (``None``: reusable, or nothing there yet)."""
    if not (output / "manifest.json").exists():
        return None
    marker = output / PROXY_FILE
    if not marker.is_file():
        return f"{output} holds a trajectory store without {PROXY_FILE} (not trained by this recipe)"
    recorded = json.loads(marker.read_text(encoding="utf-8"))
    wanted = _record(model, max_length, seed, settings)
    diffs = [f"{key} {recorded.get(key)!r}, not {value!r}" for key, value in wanted.items() if recorded.get(key) != value]
    if diffs:
        return f"the proxy in {output} was trained with " + "; ".join(diffs)
    try:
        check_trajectory_data(TrajectoryStore(output).read()[1], pool_files)
    except ValueError as err:
        return f"{output}: {err}"
    return None


def _trainer(trainer: dict[str, Any] | None, epochs: int, callback: LossTrajectoryCallback) -> pl.Trainer:
    kwargs = dict(trainer or {})
    for key, setting in (("max_epochs", "--proxy.epochs"), ("callbacks", None)):
        if key in kwargs:
            raise InputError(f"--trainer.{key} cannot be set for the S2L proxy" + (f": use {setting}" if setting else ""))
    defaults = {"logger": False, "enable_checkpointing": False, "enable_model_summary": False}
    return pl.Trainer(max_epochs=epochs, callbacks=[callback], **{**defaults, **kwargs})


def s2l_trajectories(model_name_or_path: str, pool_files: Sequence[str], output: Path, max_length: int, seed: int,
                     settings: ProxySettings | None = None, trainer: dict[str, Any] | None = None,
                     overwrite: bool = False) -> Path:
    """Train a proxy on the whole pool, recording loss trajectories at each epoch end (docs/algorithms.md §2.1).

    Args:
        model_name_or_path: the proxy's model (fully fine-tuned, no LoRA).
        pool_files: the pool's jsonl files.
        output: the trajectory store to write.
        max_length: truncation length in tokens.
        seed: seed of the data order and the initialisation.
        settings: the proxy's training settings.
        trainer: extra ``Trainer`` arguments (e.g. ``{"accelerator": "gpu", "precision": "bf16-mixed"}``).
        overwrite: retrain a proxy trained otherwise instead of refusing.

    Returns:
        ``output``, a finished trajectory store (reused when trained the same way).
    """
    settings = settings or ProxySettings()
    output = Path(output)
    reason = proxy_stale_reason(output, model_name_or_path, pool_files, max_length, seed, settings)
    if reason is None and (output / "manifest.json").exists():
        rank_zero_info(f"[skip] S2L proxy trajectories: {output} exists")
        return output
    if reason is not None:
        if not overwrite:
            raise StaleOutputError(f"{reason}; pass overwrite=True (--overwrite true) or choose another output")
        shutil.rmtree(output)
    rank_zero_info(f"S2L proxy: training {model_name_or_path} on the pool for {settings.epochs} epochs -> {output}")
    pl.seed_everything(seed, verbose=False)
    module = LoRAInstructionTuningModule(model_name_or_path=model_name_or_path, use_lora=False,
                                         learning_rate=settings.learning_rate, scheduler="cosine", warmup_ratio=0.03,
                                         seed=seed, exact_match=False)
    data = InstructionDataModule(train_files=list(pool_files), tokenizer_name_or_path=model_name_or_path,
                                 max_length=max_length, batch_size=settings.batch_size, seed=seed)
    callback = LossTrajectoryCallback(str(output), every_n_steps=0, at_epoch_end=True, batch_size=64)
    fitted = _trainer(trainer, settings.epochs, callback)
    fitted.fit(module, datamodule=data)
    if fitted.is_global_zero:  # rank 0 writes the store when training ends; the record goes beside it, last
        if not (output / "manifest.json").exists():
            raise RuntimeError(f"the S2L proxy finished but wrote no trajectory store at {output}")
        (output / PROXY_FILE).write_text(json.dumps(_record(model_name_or_path, max_length, seed, settings), indent=2) + "\n")
    return output
