"""``GradientFeatureCallback`` refuses, before the first epoch, a warmup whose snapshots LESS could not use.

Each refusal is checked to come before any snapshot exists (and, for what can be known at
fit start, before the first optimizer step), with a message naming the optimizer class,
the param groups or the directory.
"""

from __future__ import annotations

import errno
import os

import lightning.pytorch as pl
import pytest
import torch

from lightning_less.callbacks import snapshot
from lightning_less.callbacks.snapshot import GradientFeatureCallback, list_snapshots, load_snapshot
from lightning_less.errors import InputError
from lightning_less.modules.lora import LoRAInstructionTuningModule
from tests.faults.conftest import warmup


class Steps(pl.Callback):
    """An independent record of every optimizer step's lr per param group, and of epochs ended."""

    def __init__(self) -> None:
        self.lrs: dict[int, list[list[float]]] = {}
        self.epochs_ended = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.setdefault(trainer.current_epoch, []).append([g["lr"] for g in optimizer.param_groups])

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs_ended += 1


class GroupedModule(LoRAInstructionTuningModule):
    """LoRA A matrices and B matrices in two param groups with the given options (plus an extra group first)."""

    def __init__(self, a: dict, b: dict, extra: dict | None = None, lambdas=None) -> None:
        super().__init__(lora_r=4, lora_alpha=8, lora_dropout=0.0, exact_match=False)
        self.groups = (a, b, extra)
        self.lambdas = lambdas

    def configure_optimizers(self):
        named = list(self.trainable_named_parameters())
        a = [p for n, p in named if "lora_A" in n]
        b = [p for n, p in named if "lora_A" not in n]
        groups = [{"params": a, **self.groups[0]}, {"params": b, **self.groups[1]}]
        if self.groups[2] is not None:  # a group of non-LoRA parameters, as a head trained alongside would be
            self.extra = torch.nn.Parameter(torch.zeros(3))
            groups.insert(0, {"params": [self.extra], **self.groups[2]})
        optimizer = torch.optim.AdamW(groups, lr=1e-3)
        if self.lambdas is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, self.lambdas),
                                                         "interval": "step"}}


def _refused(tmp_path, module, match, before_first_step=True):
    steps = Steps()
    with pytest.raises(InputError, match=match) as err:
        warmup(tmp_path, [GradientFeatureCallback(str(tmp_path / "snaps")), steps], module=module)
    assert steps.epochs_ended == 0 and not list((tmp_path / "snaps").glob("epoch_*"))
    if before_first_step:
        assert steps.lrs == {}
    return str(err.value)


@pytest.mark.parametrize(("make", "name"), [
    (lambda params: torch.optim.SGD(params, lr=1e-2, momentum=0.9), "torch.optim.sgd.SGD"),
    (lambda params: torch.optim.Adamax(params, lr=1e-3), "torch.optim.adamax.Adamax"),
    (lambda params: torch.optim.Adagrad(params, lr=1e-2), "torch.optim.adagrad.Adagrad"),
])
def test_non_adam_optimizer_is_refused_at_fit_start(tmp_path, make, name):
    module = LoRAInstructionTuningModule(lora_r=4, lora_alpha=8, optimizer=make, exact_match=False)
    message = _refused(tmp_path, module, "needs an Adam-family optimizer")
    assert name in message


class AdamShapedSGD(torch.optim.SGD):
    """Has betas and eps like Adam, but keeps no Adam moments: only its state after a step tells."""

    def __init__(self, params, lr=1e-2):
        torch.optim.Optimizer.__init__(self, params, {"lr": lr, "betas": (0.9, 0.999), "eps": 1e-8, "momentum": 0,
                                                      "dampening": 0, "weight_decay": 0, "nesterov": False,
                                                      "maximize": False, "foreach": None, "differentiable": False,
                                                      "fused": None})


AdamShapedSGD.__module__ = __name__  # not a torch.optim class: judged by its state


def test_optimizer_without_moments_is_refused_after_its_first_step(tmp_path):
    module = LoRAInstructionTuningModule(lora_r=4, lora_alpha=8, optimizer=AdamShapedSGD, exact_match=False)
    steps = Steps()
    with pytest.raises(InputError, match="AdamShapedSGD holds no Adam moments") as err:
        warmup(tmp_path, [GradientFeatureCallback(str(tmp_path / "snaps")), steps], module=module, n_records=16)
    assert "lora_A" in str(err.value) or "lora_B" in str(err.value)
    assert len(steps.lrs[0]) == 1  # right after the first of the epoch's 4 steps, not when the epoch ends


@pytest.mark.parametrize(("a", "b", "key"), [
    ({"lr": 1e-3}, {"lr": 2e-3}, "different lr"),
    ({"betas": (0.9, 0.999)}, {"betas": (0.8, 0.999)}, "different betas"),
    ({"eps": 1e-8}, {"eps": 1e-6}, "different eps"),
])
def test_lora_groups_with_different_lr_betas_or_eps_are_refused(tmp_path, a, b, key):
    message = _refused(tmp_path, GroupedModule(a, b), key)
    assert "param groups" in message


def test_per_group_schedule_that_splits_the_lr_is_refused_at_the_first_step(tmp_path):
    # Equal at fit start (step 0), apart from the second step on: only the running check can see it.
    module = GroupedModule({"lr": 1e-3}, {"lr": 1e-3}, lambdas=[lambda s: 1.0, lambda s: 1.0 if s == 0 else 0.5])
    _refused(tmp_path, module, "different learning rates", before_first_step=False)


def test_lora_group_values_are_recorded_not_group_0(tmp_path):
    # Group 0 holds a non-LoRA parameter with its own lr and betas; the LoRA groups agree with each other.
    lora = {"lr": 3e-3, "betas": (0.8, 0.95), "eps": 1e-7}
    module = GroupedModule(lora, lora, extra={"lr": 1.0, "betas": (0.5, 0.5), "eps": 1e-3})
    steps = Steps()
    warmup(tmp_path, [GradientFeatureCallback(str(tmp_path / "snaps")), steps], module=module, epochs=2)
    for epoch, path in enumerate(list_snapshots(tmp_path / "snaps")):
        snap = load_snapshot(path)
        group1 = [lrs[1] for lrs in steps.lrs[epoch]]
        assert snap.lr == pytest.approx(sum(group1) / len(group1), rel=1e-12) and snap.lr == pytest.approx(3e-3)
        assert snap.betas == (0.8, 0.95) and snap.eps == 1e-7


def test_unwritable_dirpath_is_refused_before_training(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("not a directory")
    steps = Steps()
    with pytest.raises(InputError, match=r"cannot write to .*a_file/snaps .*choose a writable dirpath"):
        warmup(tmp_path, [GradientFeatureCallback(str(tmp_path / "a_file" / "snaps")), steps])
    assert steps.lrs == {}
    # An existing directory without write permission (simulated: these tests may run as root, who ignores modes).
    (tmp_path / "read_only").mkdir()

    def denied(parent, prefix):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(parent))

    monkeypatch.setattr(snapshot, "make_temp_dir", denied)
    with pytest.raises(InputError, match=r"cannot write to .*read_only \(Permission denied"):
        warmup(tmp_path, [GradientFeatureCallback(str(tmp_path / "read_only")), steps])
    assert steps.lrs == {}
