import lightning.pytorch as pl
import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # One built-in tiny model per test session, never the user's own cache.
    monkeypatch.setenv("LIGHTNING_LESS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))



from lightning_less.callbacks.snapshot import GradientFeatureCallback
from lightning_less.data.datamodule import InstructionDataModule
from lightning_less.modules.lora import LoRAInstructionTuningModule
from lightning_less.models.tiny import save_tiny_model
from tests.helpers import qa_records, write_jsonl


@pytest.fixture(scope="session")
def warm_run(tmp_path_factory):
    """A tiny model, a pool, targets and 2 warmup snapshots (built once per session)."""
    root = tmp_path_factory.mktemp("warm")
    model = str(save_tiny_model(root / "model"))
    pool = write_jsonl(root / "pool.jsonl", qa_records(22, prefix="p"))
    targets = write_jsonl(root / "targets.jsonl", [dict(r, subtask="s" + str(i % 2)) for i, r in enumerate(qa_records(5, prefix="t"))])
    pl.seed_everything(0, verbose=False)
    module = LoRAInstructionTuningModule(model_name_or_path=model, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                                         learning_rate=5e-3, warmup_ratio=0.0, exact_match=False)
    data = InstructionDataModule(train_files=[str(pool)], tokenizer_name_or_path=model, batch_size=4)
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[GradientFeatureCallback(str(root / "snapshots"))])
    trainer.fit(module, datamodule=data)
    return {"root": root, "model": model, "pool": str(pool), "targets": str(targets), "snapshots": str(root / "snapshots")}
