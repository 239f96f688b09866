import json

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_less.callbacks.snapshot import GradientFeatureCallback, list_snapshots, load_snapshot
from lightning_less.data.datamodule import InstructionDataModule
from lightning_less.modules.lora import LoRAInstructionTuningModule
from tests.helpers import qa_records, write_jsonl


class LRRecorder(pl.Callback):
    """An independent record of the LR of every optimizer step, per epoch."""

    def __init__(self):
        self.lrs = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.setdefault(trainer.current_epoch, []).append(trainer.optimizers[0].param_groups[0]["lr"])


def _fit(tmp_path, callbacks, epochs=2, **trainer_kw):
    pool = write_jsonl(tmp_path / "pool.jsonl", qa_records(12))
    module = LoRAInstructionTuningModule(lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=1e-3, warmup_ratio=0.2,
                                         exact_match=False)
    data = InstructionDataModule(train_files=[str(pool)], tokenizer_name_or_path="builtin:tiny-llama", batch_size=4)
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks, **trainer_kw)
    trainer.fit(module, datamodule=data)
    return module, trainer


def test_snapshots_hold_moments_by_name_and_the_mean_epoch_lr(tmp_path):
    rec = LRRecorder()
    module, trainer = _fit(tmp_path, [GradientFeatureCallback(str(tmp_path / "snaps")), rec])
    dirs = list_snapshots(tmp_path / "snaps")
    assert [d.name for d in dirs] == ["epoch_000", "epoch_001"]
    for epoch, d in enumerate(dirs):
        snap = load_snapshot(d)
        assert snap.lr == pytest.approx(sum(rec.lrs[epoch]) / len(rec.lrs[epoch]), rel=1e-9)
        assert snap.betas == (0.9, 0.999) and snap.eps == 1e-8
        assert snap.param_names == [n for n, p in module.model.named_parameters() if p.requires_grad]
        assert (d / "adapter_model.safetensors").exists()
    # The last snapshot's moments are the optimizer's final state, matched by parameter name.
    last = load_snapshot(dirs[-1])
    opt = trainer.optimizers[0]
    for name, p in module.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(last.exp_avg[name], opt.state[p]["exp_avg"])
            torch.testing.assert_close(last.exp_avg_sq[name], opt.state[p]["exp_avg_sq"])
    assert last.step == int(opt.state[next(p for p in module.parameters() if p.requires_grad)]["step"])
    assert json.loads((dirs[-1] / "snapshot.json").read_text())["global_step"] == trainer.global_step


def test_stale_snapshots_are_refused(tmp_path):
    _fit(tmp_path, [GradientFeatureCallback(str(tmp_path / "snaps"))], epochs=1)
    with pytest.raises(FileExistsError, match="epoch_000"):
        _fit(tmp_path, [GradientFeatureCallback(str(tmp_path / "snaps"))], epochs=1)
    _fit(tmp_path, [GradientFeatureCallback(str(tmp_path / "snaps"), overwrite=True)], epochs=1)


def test_state_dict_roundtrip():
    cb = GradientFeatureCallback("x")
    cb._lr_sum, cb._lr_steps, cb.written = 0.5, 3, ["a"]
    other = GradientFeatureCallback("x")
    other.load_state_dict(cb.state_dict())
    assert other.state_dict() == cb.state_dict()


def test_model_without_peft_is_refused(tmp_path):
    class Plain(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, idx):
            return self.layer(batch).sum()

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters())

    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, callbacks=[GradientFeatureCallback(str(tmp_path))])
    with pytest.raises(MisconfigurationException, match="PEFT"):
        trainer.fit(Plain(), torch.utils.data.DataLoader(torch.randn(4, 2), batch_size=2))
