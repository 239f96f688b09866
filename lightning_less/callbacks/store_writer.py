"""``ShardedStoreWriter``: a ``trainer.predict`` pass written into a :class:`GradientDatastore`.

Shared by the gradient pass (:mod:`lightning_less.passes.gradient_features`) and the S2L trajectory
pass (:mod:`lightning_less.passes.loss_trajectories`), which differ only in what they compute:

* one process writes the store itself (a compatible unfinished store is resumed);
* under DDP each rank writes its own shard ``<store>.shards/rank_<r>_of_<w>`` (the
  predict sampler gives disjoint shards), and rank 0 merges them when predict ends; an
  earlier merged store is checked on rank 0 and the verdict broadcast, so a refusal
  raises on every rank instead of leaving the others waiting;
* rows of examples without a response token (``dataset.dropped``) are written as zeros,
  marked done, and listed in the manifest as ``excluded_indices``.

The LightningModule is a :class:`StorePass`: it provides ``output_dir``, ``overwrite`` and
``store_spec(dataset)`` returning ``(manifest, names, dims, dtype)``, and its ``predict_step``
returns ``{"rows": [(name, dim, indices, values [len(indices), dim]), ...]}`` (or ``None``);
the writer sets its ``store``, ``skip`` (nothing to do) and ``done`` (``{name: bool mask}``,
kept current) before the first batch.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_less.errors import LessError
from lightning_less.stores.datastore import GradientDatastore


def predict_dataset(trainer: pl.Trainer):
    """The dataset of the running predict pass (from the datamodule, else the dataloader)."""
    if trainer.datamodule is not None:
        return trainer.datamodule._dataset("predict")
    loaders = trainer.predict_dataloaders
    return (loaders[0] if isinstance(loaders, (list, tuple)) else loaders).dataset


def shard_dir(output_dir: Path, rank: int, world_size: int) -> Path:
    return Path(f"{output_dir}.shards") / f"rank_{rank}_of_{world_size}"


@runtime_checkable
class StorePass(Protocol):
    """What :class:`ShardedStoreWriter` needs of the LightningModule whose predict pass it writes.

    Met by :class:`~lightning_less.passes.gradient_features.GradientFeatureModule` and
    :class:`~lightning_less.passes.loss_trajectories.LossTrajectoryModule` (checked in
    ``tests/test_layout.py``). A module must set ``store``, ``skip`` and ``done`` (to
    ``None``, ``False`` and ``{}``) in ``__init__``, so that it is a ``StorePass`` before
    the writer first runs.
    """

    output_dir: Path
    """The store to write (under DDP: the merged store; the rank shards go beside it)."""
    overwrite: bool
    """Replace an existing store built differently instead of refusing it."""
    store: GradientDatastore | None
    """Set by the writer: the store (or this rank's shard) being written."""
    skip: bool
    """Set by the writer: the store is already complete, so ``predict_step`` computes nothing."""
    done: dict[str, np.ndarray]
    """Set by the writer and kept current: per snapshot name, the bool mask of rows written."""

    def store_spec(self, dataset: Any) -> tuple[dict[str, Any], list[str], list[int], str]:
        """``(manifest, snapshot names, dims, dtype)`` of the store for the predict ``dataset``."""
        ...


def as_store_pass(pl_module: pl.LightningModule) -> StorePass:
    """``pl_module`` as a :class:`StorePass`, or a ``TypeError`` naming what it lacks."""
    if not isinstance(pl_module, StorePass):
        members = ("output_dir", "overwrite", "store", "skip", "done", "store_spec")
        missing = [m for m in members if not hasattr(pl_module, m)]
        raise TypeError(f"ShardedStoreWriter writes the predict pass of a StorePass; {type(pl_module).__name__} "
                        f"lacks {missing}")
    return pl_module


class ShardedStoreWriter(BasePredictionWriter):
    """Writes a predict pass's rows into the module's datastore (see the module docstring)."""

    def __init__(self, what: str = "datastore") -> None:
        super().__init__(write_interval="batch")
        self.what = what

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        module = as_store_pass(pl_module)
        dataset = predict_dataset(trainer)
        # Rank 0 builds the manifest (it may hash large files); every rank writes the same one.
        spec = trainer.strategy.broadcast(module.store_spec(dataset) if trainer.is_global_zero else None, src=0)
        manifest, names, dims, dtype = spec
        n = len(dataset.records)
        out = Path(module.output_dir)
        module.skip = False
        if trainer.world_size > 1:
            verdict: tuple[bool, str | None] = (False, None)
            if trainer.is_global_zero and (out / "manifest.json").exists():
                try:  # an earlier merged store: refused when built differently, reused only when complete
                    verdict = (GradientDatastore.create(out, manifest, names, dims, n, dtype=dtype,
                                                        overwrite=module.overwrite).is_complete(), None)
                except (ValueError, FileExistsError, LessError) as err:
                    verdict = (False, str(err))
            skip, error = trainer.strategy.broadcast(verdict, src=0)
            if error:
                raise ValueError(error)
            if skip:
                module.skip = True
                rank_zero_info(f"{self.what} {out} is already complete: nothing to do")
                return
        path = out if trainer.world_size == 1 else shard_dir(out, trainer.global_rank, trainer.world_size)
        store = GradientDatastore.create(path, manifest, names, dims, n, dtype=dtype, overwrite=module.overwrite)
        module.store = store
        if store.is_complete():
            module.skip = True
            rank_zero_info(f"{self.what} {out} is already complete: nothing to do")
            return
        excluded = np.asarray(manifest.get("excluded_indices", []), dtype=np.int64)
        if trainer.is_global_zero and excluded.size:
            for name in names:
                if not store.done_mask(name)[excluded].all():
                    for dim in dims:
                        store.write(name, dim, excluded, np.zeros((excluded.size, dim), dtype=np.float32))
                    store.mark_done(name, excluded)
        module.done = {name: store.done_mask(name) for name in names}
        # This rank's own share (the predict sampler deals rank, rank + world, ...); rank 0 marked the excluded rows.
        share = len(range(trainer.global_rank, len(dataset), trainer.world_size))
        excluded_here = excluded.size if trainer.is_global_zero else 0
        left = int(sum(share - (int(d.sum()) - excluded_here) for d in module.done.values()))
        rank_zero_info(f"{self.what}: {len(dataset)} examples x {len(names)} x dims {dims} -> {out} "
                       f"({left} rows to compute on rank {trainer.global_rank})")

    @override
    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        if not prediction:
            return
        module = cast(StorePass, pl_module)  # checked in on_predict_start
        store = module.store
        assert store is not None, "on_predict_start sets the store before the first batch"
        written: dict[str, list[np.ndarray]] = defaultdict(list)
        for name, dim, index, values in prediction["rows"]:
            store.write(name, dim, index, values)
            written[name].append(np.asarray(index))
        for name, indices in written.items():
            index = np.unique(np.concatenate(indices))
            store.mark_done(name, index)  # only once every dim of the rows is written
            module.done[name][index] = True

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        store = getattr(pl_module, "store", None)
        if store is not None:
            store.close()  # drop the writer lock now, not whenever the failed module is collected

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.strategy.barrier()
        module = cast(StorePass, pl_module)  # checked in on_predict_start
        if module.skip:
            return
        out = Path(module.output_dir)
        if trainer.world_size == 1:
            assert module.store is not None
            module.store.finalize()
            rank_zero_info(f"{self.what} complete: {out}")
            return
        if trainer.is_global_zero:
            shards = [shard_dir(out, r, trainer.world_size) for r in range(trainer.world_size)]
            if (out / "manifest.json").exists():
                GradientDatastore._remove(out)
            GradientDatastore.merge_shards(shards, out)
            shutil.rmtree(Path(f"{out}.shards"))
            rank_zero_info(f"{self.what} merged from {len(shards)} shards: {out}")
        trainer.strategy.barrier()
