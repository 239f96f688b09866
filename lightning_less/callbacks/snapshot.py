"""``GradientFeatureCallback``: snapshots of LoRA weights and Adam moments at every epoch end.

LESS (docs/algorithms.md §1.1) needs, for each warmup epoch i, the adapter theta_i, Adam's
moments m_i and v_i keyed by parameter *name*, betas, eps, and eta_i = the mean
learning rate over the epoch's optimizer steps. This callback writes exactly that, from
any Lightning training whose LightningModule holds a PEFT model and whose optimizer is
Adam-family, in the layout of docs/architecture.md:

``<dirpath>/epoch_000/`` = PEFT adapter + ``optimizer_moments.safetensors`` + ``snapshot.json``,
and ``<dirpath>/snapshots.json``, the plan of the run (which snapshots it will write,
which it wrote, whether the fit finished), so that the gradient pass refuses the set of a
fit killed before its last epoch (:func:`~lightning_less.stores.snapshots.list_snapshots`).

Everything that would make the snapshots unusable is checked when the fit starts, before
the first epoch: an optimizer without Adam moments, LoRA parameters split over param groups
with different lr / betas / eps (LESS weights each checkpoint by one lr), a ``dirpath``
that cannot be written, or another run writing the same ``dirpath`` (an exclusive lock).
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from lightning_less.errors import InputError, LessError
from lightning_less.stores.files import (DiskFullError, apply_umask, disk_full_as, make_temp_dir, remove_temps,
                                        write_json_atomic)
from lightning_less.stores.lock import DirectoryLock
from lightning_less.stores.snapshots import (MOMENTS_FILE, PLAN_FILE, SNAPSHOT_FILE, SNAPSHOT_FORMAT_VERSION, Snapshot,
                                             epoch_of, list_snapshots, load_snapshot, planned_snapshots,
                                             snapshot_dirname)

__all__ = ["GradientFeatureCallback", "find_peft_model", "snapshot_dirname", "Snapshot", "load_snapshot",
           "list_snapshots", "SNAPSHOT_FORMAT_VERSION", "MOMENTS_FILE", "SNAPSHOT_FILE"]

#: torch optimizers whose state holds ``exp_avg`` and ``exp_avg_sq`` (others, e.g. Adamax, do not).
_ADAM_FAMILY = ("Adam", "AdamW", "NAdam", "RAdam", "SparseAdam")


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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
        self._groups: list[int] = []  # the optimizer param groups holding the LoRA parameters
        self._state_checked = False
        self._lock: DirectoryLock | None = None
        self._plan: dict[str, Any] = {}

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
        self._groups = _lora_groups(_adam_optimizer(trainer), find_peft_model(pl_module))
        self._state_checked = False
        error: BaseException | None = None
        if trainer.is_global_zero:
            try:
                self._prepare_dirpath(trainer.current_epoch, trainer.max_epochs)
            except (LessError, OSError) as err:
                self._release()
                error = err
        # Rank 0's verdict on every rank, so that a refusal stops all of them instead of leaving some waiting.
        message = trainer.strategy.broadcast(None if error is None else str(error), src=0)
        if error is not None:
            raise error
        if message is not None:
            raise InputError(message)
        trainer.strategy.barrier()

    def _prepare_dirpath(self, start: int, max_epochs: int | None) -> None:
        """Lock ``dirpath``, clear what an interrupted run left, and write the plan (rank 0)."""
        try:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            self._lock = DirectoryLock(self.dirpath, "warmup snapshot").acquire()
            make_temp_dir(self.dirpath, ".epoch_probe-").rmdir()  # writable now, not at the end of epoch 0
        except OSError as err:
            raise InputError(f"GradientFeatureCallback cannot write to {self.dirpath} ({err.strerror}: "
                             f"{err.filename}); choose a writable dirpath") from None
        stale = sorted(p for p in self.dirpath.glob("epoch_*") if epoch_of(p) is not None and epoch_of(p) >= start)
        if stale:
            if not self.overwrite:
                raise FileExistsError(
                    f"{self.dirpath} already holds snapshots this run would write again ({', '.join(p.name for p in stale)}); "
                    "remove them, choose another dirpath, or pass overwrite=True"
                )
            for p in stale:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        # Half-written snapshots and plans of a killed run: only this writer can be making them now.
        remove_temps(self.dirpath, ".epoch_")
        remove_temps(self.dirpath, f".{PLAN_FILE}.", ".tmp")
        kept = [p.name for p in sorted(self.dirpath.glob("epoch_*"), key=lambda p: epoch_of(p) or 0)
                if (p / SNAPSHOT_FILE).is_file()]
        self._plan = {"format_version": SNAPSHOT_FORMAT_VERSION, "planned": planned_snapshots(max_epochs, self.every_n_epochs),
                      "written": kept, "complete": False, "max_epochs": max_epochs,
                      "every_n_epochs": self.every_n_epochs, "started": _now(), "finished": None}
        write_json_atomic(self.dirpath / PLAN_FILE, self._plan, sort_keys=False)

    def _update_plan(self, **changes: Any) -> None:
        if self._plan:
            self._plan.update(changes)
            with disk_full_as(self.dirpath / PLAN_FILE, "the warmup's plan", "then rerun the warmup with overwrite=True"):
                write_json_atomic(self.dirpath / PLAN_FILE, self._plan, sort_keys=False)

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ------------------------------------------------------------- lr tracking
    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        # The LR used by this optimizer step (schedulers step after it), from the LoRA parameters' own group.
        groups = self._groups or [0]
        lrs = [float(optimizer.param_groups[g]["lr"]) for g in groups]
        if len(set(lrs)) > 1:
            raise InputError(f"the LoRA parameters' optimizer param groups {groups} have different learning rates "
                             f"{lrs} at step {trainer.global_step} (a per-group schedule?): LESS weights each "
                             "checkpoint by one learning rate; give them one schedule")
        self._lr_sum += lrs[0]
        self._lr_steps += 1

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # Once, after the first optimizer step: the optimizer really keeps Adam moments (before any epoch ends).
        if not self._state_checked and self._lr_steps:
            _moments(_adam_optimizer(trainer), find_peft_model(pl_module), copy=False)
            self._state_checked = True

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
            error: LessError | None = None
            if trainer.is_global_zero:
                try:
                    self.write_snapshot(trainer, pl_module, path)
                except LessError as err:  # a full disk: every rank stops, none waits for rank 0 forever
                    error = err
            message = trainer.strategy.broadcast(None if error is None else str(error), src=0)
            if error is not None:
                raise error
            if message is not None:
                raise DiskFullError(message)
            self.written.append(str(path))
        self._lr_sum, self._lr_steps = 0.0, 0

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:  # the fit ended by itself: the snapshots written are the whole set
            self._update_plan(complete=True, finished=_now())

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._release()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._release()

    # ----------------------------------------------------------------- write
    def write_snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule, path: Path) -> None:
        """Write the snapshot of this epoch to ``path`` whole (temp dir, then ``os.replace``) and list it in the plan.

        Raises:
            DiskFullError: the disk filled up; the message names ``path`` and the bytes the snapshot takes.
                The temp dir goes and the plan does not list the snapshot, so the set reads as unfinished
                until the warmup is rerun.
        """
        from safetensors.torch import save_file

        if self._lr_steps == 0:
            raise RuntimeError(f"epoch {trainer.current_epoch} ran no optimizer step: there is no learning rate to record")
        peft_model = find_peft_model(pl_module)
        named = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
        optimizer = _adam_optimizer(trainer)
        group = optimizer.param_groups[(self._groups or _lora_groups(optimizer, peft_model))[0]]
        moments = _moments(optimizer, peft_model)
        steps = {int(optimizer.state[p]["step"]) if "step" in optimizer.state[p] else -1 for _, p in named}
        active = getattr(peft_model, "active_adapter", "default")
        config = peft_model.peft_config[active if isinstance(active, str) else active[0]]
        meta = {
            "format_version": SNAPSHOT_FORMAT_VERSION,
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "lr": self._lr_sum / self._lr_steps,
            "lr_steps": self._lr_steps,
            "betas": [float(b) for b in group["betas"]],
            "eps": float(group["eps"]),
            "weight_decay": float(group.get("weight_decay", 0.0)),
            "optimizer": type(optimizer).__name__,
            "step": max(steps),
            "base_model": config.base_model_name_or_path or None,  # null: a model built in memory
            "param_names": [n for n, _ in named],
        }
        need = sum(t.nbytes for t in moments.values()) + sum(p.numel() * p.element_size() for _, p in named)
        with disk_full_as(path, f"the snapshot of epoch {trainer.current_epoch}", "then rerun the warmup with "
                          "overwrite=True (it replaces the snapshots this run wrote)", need=need):
            tmp = make_temp_dir(path.parent, f".{path.name}-")
            try:
                peft_model.save_pretrained(str(tmp))
                save_file(moments, str(tmp / MOMENTS_FILE))
                write_json_atomic(tmp / SNAPSHOT_FILE, meta, sort_keys=False)
                apply_umask(tmp)  # safetensors writes 0600 files; a snapshot is as readable as the user's umask says
                if path.exists():
                    shutil.rmtree(path)
                os.replace(tmp, path)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            self._update_plan(written=sorted({*self._plan.get("written", []), path.name}))
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


def _adam_optimizer(trainer: pl.Trainer) -> torch.optim.Optimizer:
    """The one optimizer of the fit, refused unless Adam-family (betas, eps; exp_avg / exp_avg_sq state)."""
    if len(trainer.optimizers) != 1:
        raise MisconfigurationException(f"GradientFeatureCallback supports one optimizer, found {len(trainer.optimizers)}")
    optimizer = trainer.optimizers[0]
    cls = type(optimizer)
    torch_other = cls.__module__.startswith("torch.optim") and cls.__name__ not in _ADAM_FAMILY
    shaped = all(len(tuple(g.get("betas", ()))) == 2 and "eps" in g for g in optimizer.param_groups)
    if torch_other or not shaped:
        raise InputError(
            f"GradientFeatureCallback needs an Adam-family optimizer (Adam, AdamW...: betas, eps, and exp_avg / "
            f"exp_avg_sq state), got {cls.__module__}.{cls.__name__}; LESS's Adam transform cannot be computed from it"
        )
    return optimizer


def _lora_groups(optimizer: torch.optim.Optimizer, peft_model: torch.nn.Module) -> list[int]:
    """The param groups holding the trainable LoRA parameters; refused if they differ in lr, betas or eps."""
    group_of = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
    trainable = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
    orphans = [n for n, p in trainable if id(p) not in group_of]
    if orphans:
        raise InputError(f"the optimizer does not update the trainable LoRA parameters {orphans[:3]}"
                         f"{' ...' if len(orphans) > 3 else ''}: they would have no Adam moments")
    groups = sorted({group_of[id(p)] for _, p in trainable})
    for key in ("lr", "betas", "eps"):
        values = {g: optimizer.param_groups[g][key] for g in groups}
        as_float = {g: [float(x) for x in v] if key == "betas" else float(v) for g, v in values.items()}
        if len({repr(v) for v in as_float.values()}) > 1:
            raise InputError(
                f"the LoRA parameters sit in optimizer param groups with different {key} ({as_float}): LESS weights "
                "each checkpoint by one learning rate and Adam-transforms gradients with one (betas, eps); put the "
                "LoRA parameters in one group or give their groups the same lr, betas and eps"
            )
    return groups


def _moments(optimizer: torch.optim.Optimizer, peft_model: torch.nn.Module, copy: bool = True) -> dict[str, torch.Tensor]:
    """Adam's moments of every trainable LoRA parameter by name (CPU copies unless ``copy=False``: only checked).

    Raises:
        InputError: a parameter without ``exp_avg`` / ``exp_avg_sq`` state; names the optimizer class.
    """
    moments: dict[str, torch.Tensor] = {}
    for name, p in peft_model.named_parameters():
        if not p.requires_grad:
            continue
        state = optimizer.state.get(p)
        if not state or "exp_avg" not in state or "exp_avg_sq" not in state:
            raise InputError(f"{type(optimizer).__name__} holds no Adam moments (exp_avg, exp_avg_sq) for the trainable "
                             f"parameter {name!r}: GradientFeatureCallback needs an Adam-family optimizer")
        if copy:
            moments[f"{name}.exp_avg"] = state["exp_avg"].detach().cpu().contiguous()
            moments[f"{name}.exp_avg_sq"] = state["exp_avg_sq"].detach().cpu().contiguous()
    return moments
