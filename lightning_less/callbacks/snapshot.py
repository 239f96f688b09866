"""``GradientFeatureCallback``: snapshots of LoRA weights and Adam moments at every epoch end.

LESS (docs/algorithms.md §1.1) needs, for each warmup epoch i, the adapter theta_i, Adam's
moments m_i and v_i keyed by parameter *name*, betas, eps, and eta_i = the mean
learning rate over the epoch's optimizer steps. This callback writes exactly that, from
any Lightning training whose LightningModule holds a PEFT model and whose optimizer is
Adam-family, in the layout of docs/architecture.md:

``<dirpath>/epoch_000/`` = PEFT adapter + ``optimizer_moments.safetensors`` + ``snapshot.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

SNAPSHOT_FORMAT_VERSION = 1
MOMENTS_FILE = "optimizer_moments.safetensors"
SNAPSHOT_FILE = "snapshot.json"


def find_peft_model(pl_module: torch.nn.Module):
    """The first ``peft.PeftModel`` inside a LightningModule, or a clear error."""
    from peft import PeftModel

    for module in pl_module.modules():
        if isinstance(module, PeftModel):
            return module
    raise MisconfigurationException(
        f"GradientFeatureCallback needs a PEFT (LoRA) model inside {type(pl_module).__name__}: none found. "
        "Wrap your model with peft.get_peft_model(...) or use LoRAInstructionTuningModule."
    )


def snapshot_dirname(epoch: int) -> str:
    return f"epoch_{epoch:03d}"


class GradientFeatureCallback(Callback):
    """Write a LESS snapshot (adapter, Adam moments by name, metadata) at each training epoch end.

    Rank 0 writes (Adam state is replicated under DDP) while the other ranks wait. Sharded
    strategies (FSDP, DeepSpeed) are refused, since their optimizer state is partitioned.

    Args:
        dirpath: directory that receives ``epoch_XXX/`` snapshot directories.
        every_n_epochs: snapshot every n epochs (the last epoch is always snapshotted).
        overwrite: replace snapshots of epochs this run will write again; otherwise such
            stale snapshots stop the run before training.

    Example::

        trainer = Trainer(max_epochs=4, callbacks=[GradientFeatureCallback("runs/warmup/snapshots")])
    """

    def __init__(self, dirpath: str, every_n_epochs: int = 1, overwrite: bool = False) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.dirpath = Path(dirpath)
        self.every_n_epochs = every_n_epochs
        self.overwrite = overwrite
        self._lr_sum = 0.0
        self._lr_steps = 0
        self.written: list[str] = []

    # ---------------------------------------------------------------- checks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        name = type(trainer.strategy).__name__
        if "FSDP" in name or "DeepSpeed" in name:
            raise MisconfigurationException(
                f"GradientFeatureCallback cannot read Adam moments under {name}: the optimizer state is sharded "
                "across ranks. Use a DDP or single-device strategy for the warmup run."
            )
        find_peft_model(pl_module)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        start = trainer.current_epoch
        stale = sorted(p for p in self.dirpath.glob("epoch_*") if p.is_dir() and _epoch_of(p) is not None and _epoch_of(p) >= start)
        if stale and trainer.is_global_zero:
            if not self.overwrite:
                raise FileExistsError(
                    f"{self.dirpath} already holds snapshots this run would write again ({', '.join(p.name for p in stale)}); "
                    "remove them, choose another dirpath, or pass overwrite=True"
                )
            for p in stale:
                shutil.rmtree(p)
        trainer.strategy.barrier()

    # ------------------------------------------------------------- lr tracking
    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        # The LR used by this optimizer step (schedulers step after it).
        self._lr_sum += float(optimizer.param_groups[0]["lr"])
        self._lr_steps += 1

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.current.ready == 0:
            self._lr_sum, self._lr_steps = 0.0, 0

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if (epoch + 1) % self.every_n_epochs == 0 or last:
            path = self.dirpath / snapshot_dirname(epoch)
            if trainer.is_global_zero:
                self.write_snapshot(trainer, pl_module, path)
            trainer.strategy.barrier()
            self.written.append(str(path))
        self._lr_sum, self._lr_steps = 0.0, 0

    # ----------------------------------------------------------------- write
    def write_snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule, path: Path) -> None:
        from safetensors.torch import save_file

        if self._lr_steps == 0:
            raise RuntimeError(f"epoch {trainer.current_epoch} ran no optimizer step: there is no learning rate to record")
        peft_model = find_peft_model(pl_module)
        named = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
        optimizer = _adam_optimizer(trainer)
        group = optimizer.param_groups[0]
        moments: dict[str, torch.Tensor] = {}
        steps = set()
        for name, p in named:
            state = optimizer.state.get(p)
            if not state or "exp_avg" not in state or "exp_avg_sq" not in state:
                raise RuntimeError(f"the optimizer holds no Adam moments for trainable parameter {name!r}")
            moments[f"{name}.exp_avg"] = state["exp_avg"].detach().cpu().contiguous()
            moments[f"{name}.exp_avg_sq"] = state["exp_avg_sq"].detach().cpu().contiguous()
            steps.add(int(state["step"]) if "step" in state else -1)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
        try:
            peft_model.save_pretrained(str(tmp))
            save_file(moments, str(tmp / MOMENTS_FILE))
            active = getattr(peft_model, "active_adapter", "default")
            config = peft_model.peft_config[active if isinstance(active, str) else active[0]]
            meta = {
                "format_version": SNAPSHOT_FORMAT_VERSION,
                "epoch": trainer.current_epoch,
                "global_step": trainer.global_step,
                "lr": self._lr_sum / self._lr_steps,
                "lr_steps": self._lr_steps,
                "betas": list(group.get("betas", (0.9, 0.999))),
                "eps": float(group.get("eps", 1e-8)),
                "weight_decay": float(group.get("weight_decay", 0.0)),
                "optimizer": type(optimizer).__name__,
                "step": max(steps),
                "base_model": config.base_model_name_or_path or None,  # null: a model built in memory
                "param_names": [n for n, _ in named],
            }
            (tmp / SNAPSHOT_FILE).write_text(json.dumps(meta, indent=2))
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        rank_zero_info(f"snapshot of epoch {trainer.current_epoch} (mean lr {meta['lr']:.3g}) written to {path}")

    # ------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"lr_sum": self._lr_sum, "lr_steps": self._lr_steps, "written": list(self.written)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._lr_sum = state_dict["lr_sum"]
        self._lr_steps = state_dict["lr_steps"]
        self.written = list(state_dict["written"])


def _epoch_of(path: Path) -> int | None:
    try:
        return int(path.name.split("_", 1)[1])
    except (IndexError, ValueError):
        return None


def _adam_optimizer(trainer: pl.Trainer):
    if len(trainer.optimizers) != 1:
        raise MisconfigurationException(f"GradientFeatureCallback supports one optimizer, found {len(trainer.optimizers)}")
    optimizer = trainer.optimizers[0]
    group = optimizer.param_groups[0]
    if "betas" not in group or "eps" not in group:
        raise MisconfigurationException(
            f"GradientFeatureCallback needs an Adam-family optimizer (betas, eps, exp_avg, exp_avg_sq); got {type(optimizer).__name__}"
        )
    return optimizer


@dataclass
class Snapshot:
    """A loaded snapshot: metadata, adapter weights and Adam moments by parameter name."""

    path: Path
    epoch: int
    global_step: int
    lr: float
    betas: tuple[float, float]
    eps: float
    step: int
    base_model: str | None
    param_names: list[str]
    exp_avg: dict[str, torch.Tensor] = field(repr=False)
    exp_avg_sq: dict[str, torch.Tensor] = field(repr=False)
    meta: dict = field(repr=False, default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name


def load_snapshot(path: str | os.PathLike) -> Snapshot:
    """Read a snapshot directory written by :class:`GradientFeatureCallback`; errors name the missing piece."""
    from safetensors.torch import load_file

    path = Path(path)
    meta_path = path / SNAPSHOT_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{path} is not a snapshot directory: {SNAPSHOT_FILE} is missing")
    meta = json.loads(meta_path.read_text())
    for key in ("epoch", "global_step", "lr", "betas", "eps", "step", "base_model", "param_names"):
        if key not in meta:
            raise ValueError(f"{meta_path}: field {key!r} is missing")
    moments_path = path / MOMENTS_FILE
    if not moments_path.exists():
        raise FileNotFoundError(f"{moments_path} is missing")
    tensors = load_file(str(moments_path))
    exp_avg, exp_avg_sq = {}, {}
    for name in meta["param_names"]:
        for key, target in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
            full = f"{name}.{key}"
            if full not in tensors:
                raise KeyError(f"{moments_path}: no tensor {full!r} for parameter {name!r}")
            target[name] = tensors[full].float()
    return Snapshot(
        path=path,
        epoch=int(meta["epoch"]),
        global_step=int(meta["global_step"]),
        lr=float(meta["lr"]),
        betas=tuple(meta["betas"]),
        eps=float(meta["eps"]),
        step=int(meta["step"]),
        base_model=meta["base_model"] or None,
        param_names=list(meta["param_names"]),
        exp_avg=exp_avg,
        exp_avg_sq=exp_avg_sq,
        meta=meta,
    )


def list_snapshots(dirpath: str | os.PathLike) -> list[Path]:
    """Snapshot directories under ``dirpath`` in epoch order."""
    found = [p for p in Path(dirpath).glob("epoch_*") if (p / SNAPSHOT_FILE).exists()]
    if not found:
        raise FileNotFoundError(f"no snapshots (epoch_*/{SNAPSHOT_FILE}) under {dirpath}")
    return sorted(found, key=lambda p: _epoch_of(p) or 0)
