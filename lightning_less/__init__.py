"""lightning-less: targeted data selection for instruction tuning (LESS, S2L and baselines) on PyTorch Lightning."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public names, imported on first use so that light tools (selection, report) do not pay
# for importing Lightning and transformers.
_EXPORTS = {
    "InstructionDataModule": "lightning_less.data.datamodule",
    "InstructionDataset": "lightning_less.data.datamodule",
    "Record": "lightning_less.data.records",
    "RecordError": "lightning_less.data.records",
    "read_records": "lightning_less.data.records",
    "LoRAInstructionTuningModule": "lightning_less.modules.lora",
    "GradientFeatureCallback": "lightning_less.callbacks.snapshot",
    "load_snapshot": "lightning_less.callbacks.snapshot",
    "LossTrajectoryCallback": "lightning_less.callbacks.trajectory",
    "LossTrajectoryModule": "lightning_less.callbacks.trajectory",
    "GradientDumpLoop": "lightning_less.gradients.loop",
    "GradientFeatureModule": "lightning_less.gradients.loop",
    "GradientDatastore": "lightning_less.gradients.datastore",
    "LessDataModule": "lightning_less.selection.datamodule",
    "run_pipeline": "lightning_less.pipeline",
    "run_selection": "lightning_less.selection.runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lightning_less' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # pragma: no cover
    from lightning_less.callbacks.snapshot import GradientFeatureCallback, load_snapshot
    from lightning_less.callbacks.trajectory import LossTrajectoryCallback, LossTrajectoryModule
    from lightning_less.data.datamodule import InstructionDataModule, InstructionDataset
    from lightning_less.data.records import Record, RecordError, read_records
    from lightning_less.gradients.datastore import GradientDatastore
    from lightning_less.gradients.loop import GradientDumpLoop, GradientFeatureModule
    from lightning_less.modules.lora import LoRAInstructionTuningModule
    from lightning_less.pipeline import run_pipeline
    from lightning_less.selection.datamodule import LessDataModule
    from lightning_less.selection.runner import run_selection
