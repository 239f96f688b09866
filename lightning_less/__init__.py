"""lightning-less: targeted data selection for instruction tuning (LESS, S2L and baselines) on PyTorch Lightning."""

__version__ = "0.1.0"

from lightning_less.callbacks.snapshot import GradientFeatureCallback, load_snapshot
from lightning_less.data.datamodule import InstructionDataModule, InstructionDataset
from lightning_less.data.records import Record, RecordError, read_records
from lightning_less.modules.lora import LoRAInstructionTuningModule

__all__ = [
    "GradientFeatureCallback",
    "load_snapshot",
    "InstructionDataModule",
    "InstructionDataset",
    "LoRAInstructionTuningModule",
    "Record",
    "RecordError",
    "read_records",
]
