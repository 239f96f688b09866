"""LESS on your own Lightning project, end to end: warmup, gradient features, selection, training on the selection.

    PYTHONPATH=. python -m examples.own_project.run --workdir runs/own

1. Train the warmup with your own module and data, adding ``GradientFeatureCallback``
   (a snapshot of the LoRA weights and Adam's moments at each epoch end).
2. Compute the pool's Adam features and the targets' gradient features with
   ``GradientDumpLoop(model=module)``: your module, your dataloaders (no ``index``).
3. Select with LESS (``select_from_stores``: the stores are checked against each other
   and against the data given).
4. Train a fresh module on the selection (your own subset of the pool) and compare the
   target loss with the untrained module and with training on a random subset of the same size.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np

from examples.own_project.data import TARGET_TASK, TokenTaskDataModule
from examples.own_project.model import OwnLoRAModule
from lightning_less import GradientDumpLoop, GradientFeatureCallback
from lightning_less.selection.methods.less import select_from_stores

QUIET = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}


def train(indices: list[int] | None, epochs: int, seed: int, learning_rate: float,
          callbacks: list | None = None) -> OwnLoRAModule:
    """A fresh module trained on the pool examples ``indices`` (all when ``None``)."""
    pl.seed_everything(seed, verbose=False)
    module = OwnLoRAModule(learning_rate=learning_rate, seed=seed)
    data = TokenTaskDataModule(seed=seed, train_indices=indices)
    pl.Trainer(max_epochs=epochs, callbacks=callbacks or [], **QUIET).fit(module, datamodule=data)
    return module


def run(workdir: str | Path, k: int = 16, warmup_fraction: float = 0.25, epochs: int = 2, train_epochs: int = 4,
        dims: int = 64, learning_rate: float = 3e-2, seed: int = 0) -> dict[str, Any]:
    """Run the four steps in ``workdir``; returns what was selected and the target losses.

    Args:
        workdir: where the snapshots and the gradient stores go.
        k: how many pool examples to select.
        warmup_fraction: the share of the pool the warmup trains on.
        epochs: warmup epochs (one snapshot each).
        train_epochs: training epochs on the selection (and on the random subset it is compared with).
        dims: projection dimension of the gradient features.
        learning_rate: AdamW's peak learning rate, warmup and training.
        seed: seed of the data, the base model and the samples.
    """
    workdir = Path(workdir)
    data = TokenTaskDataModule(seed=seed)
    rng = np.random.default_rng(seed)
    n_pool = len(data.pool)
    warmup = sorted(rng.permutation(n_pool)[: max(1, round(warmup_fraction * n_pool))].tolist())
    module = train(warmup, epochs, seed, learning_rate, callbacks=[GradientFeatureCallback(str(workdir / "snapshots"), overwrite=True)])

    stores = {}
    for split, feature in (("pool", "adam"), ("targets", "sgd")):
        loop = GradientDumpLoop(snapshots=str(workdir / "snapshots"), output_dir=str(workdir / "features" / split),
                                feature=feature, dims=[dims], projector="sparse_jl", store_dtype="float32", model=module,
                                overwrite=True, trainer_kwargs={"enable_progress_bar": False, "enable_model_summary": False})
        stores[split] = loop.run(data.loader(split))

    result = select_from_stores(stores["pool"], stores["targets"], k, data.target_subtasks,
                                pool_data=data.loader("pool"), target_data=data.loader("targets"))
    selected = [int(i) for i in result.selected]
    randomly = sorted(rng.choice(n_pool, size=k, replace=False).tolist())
    losses = {name: float(train(indices, train_epochs, seed, learning_rate).example_losses(data.loader("targets")).mean())
              for name, indices in (("less", selected), ("random", randomly))}
    losses["untrained"] = float(OwnLoRAModule(seed=seed).example_losses(data.loader("targets")).mean())
    share = lambda idx: sum(data.pool[i]["task"] == TARGET_TASK for i in idx) / len(idx)  # noqa: E731
    return {"snapshots": str(workdir / "snapshots"), "pool_store": str(stores["pool"].path),
            "target_store": str(stores["targets"].path), "selected": selected,
            "target_task_share": {"pool": share(range(n_pool)), "less": share(selected), "random": share(randomly)},
            "target_loss": losses}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/own")
    parser.add_argument("--k", type=int, default=16)
    args = parser.parse_args()
    print(json.dumps(run(args.workdir, k=args.k), indent=2))
