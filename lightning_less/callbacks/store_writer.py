"""``ShardedStoreWriter``: a ``trainer.predict`` pass written into a :class:`GradientDatastore`.

Shared by the gradient pass (:mod:`lightning_less.passes.gradient_features`) and the S2L trajectory
pass (:mod:`lightning_less.passes.loss_trajectories`), which differ only in what they compute:

* the data may be any ``DataLoader`` or ``LightningDataModule`` of HF-style dict batches
  (``input_ids``, ``attention_mask``, ``labels``; ``index`` optional). Rank 0 identifies
  it before anything is computed (:func:`describe_predict_data`): by its own
  ``data_fingerprint()`` when it has one, else by a hash of its token ids and labels
  (:func:`~lightning_less.stores.provenance.token_identity`); the store records it as
  ``data``, so a resumed pass and every consumer refuse other data;
* an example's row is its batch ``index``, else its position in the dataset, which
  Lightning's samplers report as the batch's indices (:func:`batch_rows`), under DDP too;
* one process writes the store itself (a compatible unfinished store is resumed);
* under DDP each rank writes its own shard ``<store>.shards/rank_<r>_of_<w>`` (the
  predict sampler gives disjoint shards), and rank 0 merges them when predict ends; what
  only rank 0 does (identifying the data, checking an earlier merged store, the merge)
  and what may fail on one rank (opening its shard) is wrapped in
  :mod:`lightning_less.distributed`, so a refusal raises the same error on every rank
  instead of leaving the others waiting at the next collective;
* rows without an example (no response token: the data's ``excluded_indices``) are
  written as zeros (by rank 0, in its shard), marked done on every rank (so no rank
  computes them, wherever the sampler deals them), and listed in the manifest as
  ``excluded_indices`` (and ``excluded_ids`` when the data names them).

The LightningModule is a :class:`StorePass`: it provides ``output_dir``, ``overwrite`` and
``store_spec(data)`` returning ``(manifest, names, dims, dtype)`` (the writer adds ``data``
and ``excluded_indices``), and its ``predict_step`` returns
``{"rows": [(name, dim, rows, values [len(rows), dim]), ...]}`` (or ``None``), the rows
given by :func:`batch_rows`; the writer sets its ``store``, ``skip`` (nothing to do) and
``done`` (``{name: bool mask}``, kept current) before the first batch.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_less.data.datamodule import FingerprintedData
from lightning_less.distributed import on_rank_zero, shared_failure
from lightning_less.errors import IncompatibleError, InputError
from lightning_less.stores.datastore import GradientDatastore
from lightning_less.stores.provenance import DataIdentity, example_digests, fingerprinted_identity, token_identity

#: Manifest keys the writer sets from the data (a pass's ``store_spec`` leaves them out).
DATA_KEYS = ("data", "excluded_indices", "excluded_ids")


def predict_loader(trainer: pl.Trainer) -> Any:
    """The one dataloader of the running predict pass."""
    loaders = trainer.predict_dataloaders
    if isinstance(loaders, (list, tuple)):
        if len(loaders) != 1:
            raise InputError(f"a store pass runs over one predict dataloader, got {len(loaders)}")
        loaders = loaders[0]
    return loaders


def describe_predict_data(trainer: pl.Trainer) -> DataIdentity:
    """What the store records of the predict data: the datamodule's or the dataset's ``data_fingerprint()``
    (:class:`~lightning_less.data.datamodule.FingerprintedData`), else a hash of its token ids and labels."""
    loader = predict_loader(trainer)
    dataset = getattr(loader, "dataset", None)
    if isinstance(trainer.datamodule, FingerprintedData):
        return fingerprinted_identity(trainer.datamodule, len(dataset))
    if isinstance(dataset, FingerprintedData):
        return fingerprinted_identity(dataset, len(dataset))
    if not isinstance(loader, DataLoader):
        raise InputError(f"the predict data is a {type(loader).__name__}: give a torch DataLoader, or a dataset / "
                         "datamodule with data_fingerprint() (lightning_less.data.datamodule.FingerprintedData)")
    return token_identity(loader)


def excluded_ids(trainer: pl.Trainer) -> list[str] | None:
    """The ids of the predict data's excluded rows, when the data names them (``excluded_ids``, as
    ``InstructionDataModule`` does); ``None`` for data known by its token ids only."""
    for source in (trainer.datamodule, getattr(predict_loader(trainer), "dataset", None)):
        if isinstance(source, FingerprintedData):
            ids = getattr(source, "excluded_ids", None)
            return None if ids is None else [str(i) for i in ids]
    return None


def batch_rows(trainer: pl.Trainer, batch: dict) -> np.ndarray:
    """The store rows of a predict batch: its ``index``, else the dataset positions the sampler drew.

    Lightning records the sampler's indices of the current batch (``current_batch_indices``)
    for prediction writers: dataset positions, also under DDP, where rank ``r`` of ``W``
    gets positions ``r, r + W, ...``.
    """
    if "index" in batch:
        return torch.as_tensor(batch["index"]).cpu().numpy().astype(np.int64).reshape(-1)
    positions = list(trainer.predict_loop.current_batch_indices)
    if len(positions) != batch["input_ids"].shape[0]:
        raise InputError("the batches hold no 'index' and Lightning could not tell which dataset positions this batch "
                         "holds (a DataLoader with a batch sampler is needed): put an 'index' [B] in each batch")
    return np.asarray(positions, dtype=np.int64)


def take_rows(batch: dict, keep: np.ndarray) -> dict:
    """The batch's examples where ``keep`` (bool [B]) is set: every tensor with one row per example is cut."""
    size = batch["input_ids"].shape[0]
    picks = torch.as_tensor(np.flatnonzero(keep), device=batch["input_ids"].device)
    return {k: (v[picks.to(v.device)] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == size else v)
            for k, v in batch.items()}


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

    def store_spec(self, data: DataIdentity) -> tuple[dict[str, Any], list[str], list[int], str]:
        """``(manifest, snapshot names, dims, dtype)`` of the store for the predict ``data`` (``data.n_examples``
        rows); the manifest leaves out ``data`` and ``excluded_indices``, which the writer records."""
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
        self.data: DataIdentity | None = None
        self.finished = False  # the store was complete before the pass: nothing to write or merge

    def _spec(self, trainer: pl.Trainer, module: StorePass) -> tuple[DataIdentity, tuple]:
        data = describe_predict_data(trainer)
        manifest, names, dims, dtype = module.store_spec(data)
        clash = [k for k in DATA_KEYS if k in manifest]
        if clash:
            raise ValueError(f"{type(module).__name__}.store_spec sets {clash}: the writer records the data itself")
        manifest = {**manifest, "data": data.fingerprint, "excluded_indices": data.excluded_indices}
        ids = excluded_ids(trainer)
        if ids is not None:  # named as well as counted (the indices are rows, the ids the user's records)
            manifest["excluded_ids"] = ids
        return data, (manifest, names, dims, dtype)

    @staticmethod
    def _merged_is_complete(out: Path, spec: tuple, n: int, overwrite: bool) -> bool:
        """An earlier merged store at ``out``: refused when built differently, reused only when complete."""
        if not (out / "manifest.json").exists():
            return False
        manifest, names, dims, dtype = spec
        return GradientDatastore.create(out, manifest, names, dims, n, dtype=dtype, overwrite=overwrite).is_complete()

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        module = as_store_pass(pl_module)
        # Rank 0 identifies the data and builds the manifest (it may read the data once and hash
        # large files); every rank writes the same one. A refusal there is raised on every rank.
        self.data, spec = on_rank_zero(self._spec, trainer, module)
        manifest, names, dims, dtype = spec
        n = self.data.n_examples
        out = Path(module.output_dir)
        module.skip = self.finished = False
        if trainer.world_size > 1 and on_rank_zero(self._merged_is_complete, out, spec, n, module.overwrite):
            module.skip = self.finished = True
            rank_zero_info(f"{self.what} {out} is already complete: nothing to do")
            return
        path = out if trainer.world_size == 1 else shard_dir(out, trainer.global_rank, trainer.world_size)
        with shared_failure():  # a shard refused on one rank (locked, built differently) stops every rank
            store = GradientDatastore.create(path, manifest, names, dims, n, dtype=dtype, overwrite=module.overwrite)
        module.store = store
        if store.is_complete():  # one process: the store itself (shards are never finalized)
            module.skip = self.finished = True
            rank_zero_info(f"{self.what} {out} is already complete: nothing to do")
            return
        excluded = np.asarray(self.data.excluded_indices, dtype=np.int64)
        if trainer.is_global_zero and excluded.size:  # one shard holds their zeros: the merge counts each row once
            for name in names:
                if not store.done_mask(name)[excluded].all():
                    for dim in dims:
                        store.write(name, dim, excluded, np.zeros((excluded.size, dim), dtype=np.float32))
                    store.mark_done(name, excluded)
        # Every rank knows the excluded rows as done, so none computes them wherever the sampler deals them.
        module.done = {name: store.done_mask(name) for name in names}
        for done in module.done.values():
            done[excluded] = True
        # This rank's own share: the predict sampler deals dataset positions rank, rank + world, ...; a dataset
        # that leaves the excluded rows out holds the other rows in order.
        rows = np.arange(n) if len(predict_loader(trainer).dataset) == n else np.setdiff1d(np.arange(n), excluded)
        share = rows[trainer.global_rank :: trainer.world_size]
        left = int(sum((~done[share]).sum() for done in module.done.values()))
        shown = f" ({excluded.size} without a response token: zeros)" if excluded.size else ""
        rank_zero_info(f"{self.what}: {n - excluded.size} examples{shown} x {len(names)} x dims {dims} -> {out} "
                       f"({left} rows to compute on rank {trainer.global_rank})")

    def _check_batch(self, trainer: pl.Trainer, batch: dict) -> None:
        """Refuse a batch whose rows the data identity does not account for, before anything is written."""
        assert self.data is not None, "on_predict_start identifies the data before the first batch"
        rows = batch_rows(trainer, batch)
        if rows.size and (rows.min() < 0 or rows.max() >= self.data.n_examples):
            raise InputError(f"batch rows {rows.tolist()[:10]} fall outside the {self.data.n_examples} rows of the data")
        if "index" not in batch and self.data.excluded_indices and self.data.digests is None:
            raise InputError("the data excludes some indices but its batches hold no 'index': add 'index' to the batches")
        if self.data.digests is not None and not np.array_equal(example_digests(batch), self.data.digests[rows]):
            raise IncompatibleError(f"the examples at rows {rows.tolist()[:10]} differ from those read when the pass "
                                    "started: the data must give the same token ids and labels every time it is read")

    @override
    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        module = cast(StorePass, pl_module)  # checked in on_predict_start
        if module.skip:
            return
        self._check_batch(trainer, batch)
        if not prediction:
            return
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
        module = cast(StorePass, pl_module)  # checked in on_predict_start
        if self.finished:  # decided alike on every rank
            return
        out = Path(module.output_dir)
        if trainer.world_size == 1:
            assert module.store is not None
            module.store.finalize()
            rank_zero_info(f"{self.what} complete: {out}")
            return
        trainer.strategy.barrier()  # every shard is written
        with shared_failure():  # a failed merge raises on every rank instead of leaving the others at a barrier
            if trainer.is_global_zero:
                shards = [shard_dir(out, r, trainer.world_size) for r in range(trainer.world_size)]
                if (out / "manifest.json").exists():
                    GradientDatastore._remove(out)
                GradientDatastore.merge_shards(shards, out)
                shutil.rmtree(Path(f"{out}.shards"))
                rank_zero_info(f"{self.what} merged from {len(shards)} shards: {out}")
