"""lightning-less: targeted data selection for instruction tuning (LESS, S2L and baselines) on PyTorch Lightning."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lightning_less.version import __version__

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
    "LossTrajectoryCallback": "lightning_less.callbacks.loss_trajectory",
    "LossTrajectoryModule": "lightning_less.passes.loss_trajectories",
    "GradientDumpLoop": "lightning_less.passes.gradient_features",
    "GradientFeatureModule": "lightning_less.passes.gradient_features",
    "GradientDatastore": "lightning_less.stores.datastore",
    "LessDataModule": "lightning_less.selection.datamodule",
    "run_pipeline": "lightning_less.recipes.pipeline",
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
    from lightning_less.callbacks.loss_trajectory import LossTrajectoryCallback
    from lightning_less.passes.loss_trajectories import LossTrajectoryModule
    from lightning_less.data.datamodule import InstructionDataModule, InstructionDataset
    from lightning_less.data.records import Record, RecordError, read_records
    from lightning_less.stores.datastore import GradientDatastore
    from lightning_less.passes.gradient_features import GradientDumpLoop, GradientFeatureModule
    from lightning_less.modules.lora import LoRAInstructionTuningModule
    from lightning_less.recipes.pipeline import run_pipeline
    from lightning_less.selection.datamodule import LessDataModule
    from lightning_less.selection.runner import run_selection
