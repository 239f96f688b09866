"""``GradientDumpLoop``: LESS step 2 (docs/algorithms.md §1.2-1.4) as a ``trainer.predict`` pass.

Lightning 2.x keeps its loop classes private, so the "loop" is an orchestrator around
``trainer.predict`` (docs/architecture.md): :class:`GradientFeatureModule` computes, for every batch
and every snapshot, the per-example LoRA gradients in one backward pass, Adam-transforms
them (``adam``, pool) or not (``sgd``, targets), projects them to every requested dim,
and :class:`~lightning_less.callbacks.store_writer.ShardedStoreWriter` writes the rows into a
:class:`GradientDatastore`.

* Any model: a base model by path or hub name, or your own ``LightningModule`` / ``nn.Module``
  holding a PEFT model (snapshot weights swapped in place, restored when the pass ends).
* Any data: HF-style dict batches from a ``DataLoader`` or ``LightningDataModule``, recorded in
  the store (docs/architecture.md, "Running a pass on your own project").
* Resume skips rows already done; under DDP each rank writes a shard that rank 0 merges into
  a store equal to a one-process run; examples without a response token get no features
  (``excluded_indices``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_less.callbacks.snapshot import Snapshot, find_peft_model, load_snapshot
from lightning_less.callbacks.store_writer import ShardedStoreWriter, batch_rows, take_rows
from lightning_less.errors import IncompatibleError, InputError, MissingInputError
from lightning_less.gradients.per_example import PerExampleLoRAGradients, adam_transform, flatten_moments
from lightning_less.gradients.projectors import make_projector
from lightning_less.models.loading import load_causal_lm
from lightning_less.stores.datastore import GradientDatastore
from lightning_less.stores.provenance import DataIdentity, check_batch, snapshot_files_sha256, weights_sample_sha256
from lightning_less.stores.snapshots import resolve_snapshots

FeatureKind = Literal["adam", "sgd"]


#: Adapter settings that change the LoRA layers' output for given weights (the parameter names check the rest).
ADAPTER_KEYS = ("r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern", "use_dora")


def snapshot_fingerprint(snap: Snapshot) -> dict[str, Any]:
    """What makes two stores' snapshots the same: the sha256 of its files (and, for reading, its name, epoch, lr)."""
    return {"name": snap.name, "epoch": snap.epoch, "lr": snap.lr, "base_model": snap.base_model,
            "sha256": snapshot_files_sha256(snap.path)}


class _RestoreModel(Callback):
    """Give the user's model back as it was when the pass ends, or fails."""

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.restore_model()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        pl_module.restore_model()


class GradientFeatureModule(pl.LightningModule):
    """Per-example projected gradient features of every snapshot, in ``predict_step``.

    Args:
        snapshots: a snapshot root (``epoch_*`` dirs) or a list of snapshot dirs.
        output_dir: the gradient datastore to write.
        feature: ``"adam"`` (pool; docs/algorithms.md §1.3 Adam transform) or ``"sgd"`` (targets; raw gradient).
        dims: projection dims, all computed in the same pass.
        projector: ``"trak_basic"``, ``"trak_cuda"`` or ``"sparse_jl"``; never a fallback.
        projector_seed: seed of the projection matrix (the reference uses 0).
        projector_kwargs: extra projector options (``block_size``, ``sparsity``, ``num_sms``...).
        model: your own ``LightningModule`` / ``nn.Module`` holding a PEFT (LoRA) model with the
            snapshots' adapter layout (each snapshot's LoRA weights are swapped into it in place
            and restored when the pass ends), or a base model's path or hub name (the snapshots'
            adapter is loaded on it). Default: the snapshots' ``base_model``.
        model_name_or_path: the base model by path or hub name (the same as a string ``model``;
            the CLI links it to the datamodule's tokenizer).
        dtype: base model dtype when loaded by name (see ``LoRAInstructionTuningModule``).
        attn_implementation: passed to ``from_pretrained`` when loaded by name.
        store_dtype: ``float16`` (as the reference), ``float32``, ``int8`` or ``1bit`` (quantized as rows arrive).
        overwrite: replace an existing store built differently (a compatible one is resumed).
        projection_buffer_bytes: for projectors with a fixed cost per call (TRAK's ``BasicProjector``
            regenerates its matrix unless cached), collect up to this many bytes of gradient rows
            per call. Rows are marked done only once written (an interrupted run recomputes them).
    """

    def __init__(
        self,
        snapshots: str | list[str],
        output_dir: str,
        feature: FeatureKind = "adam",
        dims: list[int] | int = 8192,
        projector: str = "trak_basic",
        projector_seed: int = 0,
        projector_kwargs: dict[str, Any] | None = None,
        model: torch.nn.Module | str | None = None,
        model_name_or_path: str | None = None,
        dtype: str | None = None,
        attn_implementation: str | None = None,
        store_dtype: str = "float16",
        overwrite: bool = False,
        projection_buffer_bytes: int = 1 << 30,
    ) -> None:
        super().__init__()
        if feature not in ("adam", "sgd"):
            raise ValueError(f"feature must be 'adam' or 'sgd', got {feature!r}")
        self.feature = feature
        self.dims = [dims] if isinstance(dims, int) else [int(d) for d in dims]
        self.output_dir = Path(output_dir)
        self.projector_kind = projector
        self.projector_seed = projector_seed
        self.projector_kwargs = dict(projector_kwargs or {})
        self.store_dtype = store_dtype
        self.overwrite = overwrite
        self.snapshots = [load_snapshot(p) for p in resolve_snapshots(snapshots)]
        names = [s.name for s in self.snapshots]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"snapshot directory names must be given and distinct, got {names}")
        self.param_names = list(self.snapshots[0].param_names)
        for snap in self.snapshots[1:]:
            if snap.param_names != self.param_names:
                raise IncompatibleError(f"{snap.path} and {self.snapshots[0].path} hold different LoRA parameters")
        self.model = self._resolve_model(model, model_name_or_path, dtype, attn_implementation)
        self._home = next(self.model.parameters()).device  # where a user's model goes back to
        self._check_adapter_config()
        # Each snapshot's LoRA weights, keyed like named_parameters(), swapped in per batch.
        self._weights = self._snapshot_weights()
        numels = [self._weights[0][n].numel() for n in self.param_names]
        self.numel = sum(numels)
        self._moments: list[tuple[torch.Tensor, torch.Tensor]] = []
        if feature == "adam":
            for snap in self.snapshots:
                moments = {f"{n}.{k}": t for n in snap.param_names for k, t in
                           (("exp_avg", snap.exp_avg[n]), ("exp_avg_sq", snap.exp_avg_sq[n]))}
                self._moments.append(flatten_moments(moments, self.param_names, numels))
        self.grads: PerExampleLoRAGradients | None = None  # hooks on the model while the pass runs
        self._saved: dict[str, Any] | None = None  # the model's own state, while the pass runs
        self.projectors: dict[int, Any] = {}
        self.store: GradientDatastore | None = None
        self.skip = False  # set by the writer: the store is already complete
        self.done: dict[str, np.ndarray] = {}  # set by the writer: done rows per snapshot
        self.projection_buffer_bytes = projection_buffer_bytes
        self._pending: list[tuple[np.ndarray, dict[str, torch.Tensor]]] = []
        self._pending_rows = 0

    # ---------------------------------------------------------------- the model
    def _resolve_model(self, model: torch.nn.Module | str | None, model_name_or_path: str | None, dtype: str | None,
                       attn_implementation: str | None) -> torch.nn.Module:
        if model is not None and model_name_or_path is not None:
            raise InputError("give model or model_name_or_path, not both")
        if isinstance(model, torch.nn.Module):
            if dtype is not None or attn_implementation is not None:
                raise InputError("dtype and attn_implementation apply to a model loaded by name, not to a model object")
            try:
                found = find_peft_model(model)
            except MisconfigurationException:
                raise InputError(f"the model given ({type(model).__name__}) holds no PEFT model: the gradient pass swaps "
                                 "the snapshots' LoRA weights into it, so wrap it with peft.get_peft_model") from None
            self.model_source = {"kind": "module", "class": f"{type(model).__module__}.{type(model).__qualname__}"}
            return found
        from peft import PeftModel

        base = model or model_name_or_path or self.snapshots[0].base_model
        if not base:
            raise MissingInputError(f"the snapshots under {self.snapshots[0].path.parent} were taken on a model built in "
                                    "memory (snapshot.json base_model is null): pass model=<your module or path>")
        self.model_source = {"kind": "path", "name_or_path": str(base), "dtype": dtype}
        loaded = load_causal_lm(str(base), dtype=dtype, attn_implementation=attn_implementation)
        return PeftModel.from_pretrained(loaded, str(self.snapshots[0].path), is_trainable=True)

    @property
    def _adapter(self) -> str:
        active = self.model.active_adapter
        return active if isinstance(active, str) else active[0]

    def _check_adapter_config(self) -> None:
        """The snapshots' adapters must scale their LoRA outputs as the model's does (same rank, alpha...)."""
        mine = self.model.peft_config[self._adapter].to_dict()
        for snap in self.snapshots:
            theirs = json.loads((snap.path / "adapter_config.json").read_text())
            diffs = [f"{k}: {theirs.get(k)!r} != {mine.get(k)!r}" for k in ADAPTER_KEYS if theirs.get(k) != mine.get(k)]
            if diffs:
                raise IncompatibleError(f"{snap.path}: its adapter differs from the model's ({'; '.join(diffs)})")

    @torch.no_grad()
    def _snapshot_weights(self) -> list[dict[str, torch.Tensor]]:
        """Each snapshot's LoRA weights by parameter name (PEFT maps the file's keys); the model is left as it was."""
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        params = dict(self.model.named_parameters())
        missing = [n for n in self.param_names if n not in params]
        if missing:
            raise IncompatibleError(f"the snapshots' parameters {missing[:3]} are not in the model given: they were "
                                    "taken on another model or adapter layout")
        original = {n: params[n].detach().clone() for n in self.param_names}
        out = []
        try:
            for snap in self.snapshots:
                try:
                    result = set_peft_model_state_dict(self.model, load_peft_weights(str(snap.path), device="cpu"),
                                                       adapter_name=self._adapter)
                except RuntimeError as err:  # shapes that do not fit
                    raise IncompatibleError(f"{snap.path} does not fit the model given: {err}") from None
                absent = sorted(set(self.param_names) & set(getattr(result, "missing_keys", [])))
                if absent:
                    raise IncompatibleError(f"{snap.path} holds no weights for {absent[:3]}")
                out.append({n: params[n].detach().clone() for n in self.param_names})
        finally:
            for n, w in original.items():
                params[n].copy_(w)
        return out

    def engage_model(self) -> None:
        """Hook the model for per-example gradients of exactly the snapshots' LoRA parameters (undone by :meth:`restore_model`)."""
        if self._saved is not None:
            return
        params = dict(self.model.named_parameters())
        self._saved = {"weights": {n: params[n].detach().clone() for n in self.param_names},
                       "requires_grad": {n: p.requires_grad for n, p in params.items()}, "training": self.model.training}
        wanted = set(self.param_names)
        for n, p in params.items():
            p.requires_grad_(n in wanted)
        self.grads = PerExampleLoRAGradients(self.model)
        if self.grads.param_names != self.param_names:
            self.restore_model()
            raise IncompatibleError("the model's LoRA parameters are not, in order, those of the snapshots")
        self.model.eval()  # LoRA dropout off (docs/algorithms.md §1.2)

    @torch.no_grad()
    def restore_model(self) -> None:
        """Put the model's own LoRA weights, trainable flags, mode and (for a model given) device back."""
        if self._saved is None:
            return
        if self.grads is not None:
            self.grads.remove_hooks()
        self.grads = None
        params = dict(self.model.named_parameters())
        for n, w in self._saved["weights"].items():
            params[n].copy_(w)
        for n, flag in self._saved["requires_grad"].items():
            params[n].requires_grad_(flag)
        self.model.train(self._saved["training"])
        if self.model_source["kind"] == "module":
            self.model.to(self._home)
        self._saved = None

    @property
    def snapshot_names(self) -> list[str]:
        """The snapshots' directory names: the store's snapshot names."""
        return [s.name for s in self.snapshots]

    @override
    def configure_callbacks(self):
        return [ShardedStoreWriter("gradient datastore"), _RestoreModel()]

    def store_spec(self, data: DataIdentity) -> tuple[dict[str, Any], list[str], list[int], str]:
        """What :class:`ShardedStoreWriter` needs to create (or resume) this pass's store."""
        return self.manifest(data), self.snapshot_names, self.dims, self.store_dtype

    # ---------------------------------------------------------------- set up
    @override
    def setup(self, stage: str) -> None:
        if stage != "predict":
            raise RuntimeError("GradientFeatureModule only runs `predict` (the gradient pass)")
        device = self.device if self.device.type != "meta" else torch.device("cpu")
        self.projectors = {d: make_projector(self.projector_kind, self.numel, d, seed=self.projector_seed, device=device,
                                             **self.projector_kwargs) for d in self.dims}
        per_call = any(getattr(p, "regenerates_per_call", False) for p in self.projectors.values())
        row_bytes = 4 * self.numel * len(self.snapshots)
        self.rows_per_call = max(1, self.projection_buffer_bytes // row_bytes) if per_call else 1

    @override
    def on_predict_start(self) -> None:
        self.engage_model()

    def manifest(self, data: DataIdentity | None = None) -> dict[str, Any]:
        """The store manifest (the writer adds the data): everything needed to refuse mixing incompatible stores."""
        return {
            "feature_kind": self.feature,
            "projector": {str(d): p.describe() for d, p in self.projectors.items()},
            "snapshot_info": [snapshot_fingerprint(s) for s in self.snapshots],
            "snapshot_lrs": [s.lr for s in self.snapshots],
            "adam": None if self.feature != "adam" else [{"betas": list(s.betas), "eps": s.eps} for s in self.snapshots],
            "model": {**self.model_source, "weights_sample_sha256": weights_sample_sha256(self.model, set(self.param_names))},
            "grad_dim": self.numel,
        }

    # --------------------------------------------------------------- compute
    @override
    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict | None:
        if torch.is_inference_mode_enabled():
            raise RuntimeError("the gradient pass needs gradients, but predict runs under torch.inference_mode: "
                               "create the Trainer with inference_mode=False (trainer.inference_mode: false in YAML)")
        if self.skip:
            return None
        check_batch(batch)
        last = batch_idx + 1 >= self.trainer.num_predict_batches[dataloader_idx]
        index = batch_rows(self.trainer, batch)
        todo = ~np.logical_and.reduce([self.done[s][index] for s in self.snapshot_names])
        if not todo.any():
            return self._buffer(None, {}, last)
        batch, index = (batch, index) if todo.all() else (take_rows(batch, todo), index[todo])
        params = dict(self.model.named_parameters())
        chunked = all(hasattr(p, "accumulate") for p in self.projectors.values())
        rows: dict[str, torch.Tensor] = {}
        features: dict[tuple[str, int], torch.Tensor] = {}
        with torch.enable_grad():
            for s, snap in enumerate(self.snapshots):
                with torch.no_grad():
                    for n, w in self._weights[s].items():
                        params[n].copy_(w)
                if chunked:
                    # Stream parameter by parameter: Adam transform and projection per chunk, so the
                    # full [B, P] gradient never exists (P = 2^27 on Llama-2-7B with r=128).
                    acc = {d: torch.zeros(d, len(index), device=self.device) for d in self.projectors}
                    self.grads.compute_chunks(batch, lambda offset, g, s=s, snap=snap: self._consume(acc, s, snap, offset, g))
                    for d, proj in self.projectors.items():
                        features[snap.name, d] = proj.finish(acc[d])
                    continue
                grads, _ = self.grads.compute(batch)
                if self.feature == "adam":
                    m, v = self._moments[s]
                    grads = adam_transform(grads, m, v, beta1=snap.betas[0], beta2=snap.betas[1], eps=snap.eps)
                if self.rows_per_call > 1:  # a projector with a cost per call: rows collected (bounded in bytes)
                    rows[snap.name] = grads
                else:  # projected now: one snapshot's [B, P] gradient alive at a time, not all of them and a cat copy
                    features.update({(snap.name, d): proj.project(grads) for d, proj in self.projectors.items()})
                del grads
        if features:
            return {"rows": [(snap, d, index, f.cpu().numpy()) for (snap, d), f in features.items()]}
        return self._buffer(index, rows, last)

    def _consume(self, features: dict[int, torch.Tensor], s: int, snap: Snapshot, offset: int, g: torch.Tensor) -> None:
        if self.feature == "adam":
            m, v = self._moments[s]
            n = g.shape[1]
            g = adam_transform(g, m[offset : offset + n], v[offset : offset + n], beta1=snap.betas[0],
                               beta2=snap.betas[1], eps=snap.eps)
        for d, proj in self.projectors.items():
            proj.accumulate(features[d], g, offset)

    def _buffer(self, index: np.ndarray | None, rows: dict[str, torch.Tensor], last: bool) -> dict | None:
        """Collect rows until a projector call is worth it (TRAK regenerates its matrix per call)."""
        if index is not None and len(index):
            self._pending.append((index, rows))
            self._pending_rows += len(index)
        if not self._pending or (self._pending_rows < self.rows_per_call and not last):
            return None
        index = np.concatenate([i for i, _ in self._pending])
        out = []
        for snap in self.snapshot_names:
            stacked = torch.cat([r[snap] for _, r in self._pending])
            for d, proj in self.projectors.items():
                out.append((snap, d, index, proj.project(stacked).cpu().numpy()))
        self._pending, self._pending_rows = [], 0
        return {"rows": out}


class GradientDumpLoop:
    """Run the gradient pass for a dataset and a set of snapshots (``trainer.predict`` underneath).

    Args:
        trainer_kwargs: ``Trainer`` arguments (``inference_mode`` is always ``False``: gradients are needed).
        **module_kwargs: :class:`GradientFeatureModule` arguments (``snapshots``, ``output_dir``,
            ``feature``, ``dims``, ``projector``, ``model``...).

    Example::

        loop = GradientDumpLoop(snapshots="runs/warmup/snapshots", output_dir="runs/grads/pool",
                                feature="adam", dims=[8192], projector="trak_basic", model=my_lightning_module)
        store = loop.run(my_datamodule_or_dataloader)          # a finished GradientDatastore
    """

    def __init__(self, trainer_kwargs: dict[str, Any] | None = None, **module_kwargs: Any) -> None:
        self.module_kwargs = module_kwargs
        self.trainer_kwargs = {"logger": False, "enable_checkpointing": False, **(trainer_kwargs or {}),
                               "inference_mode": False}

    def run(self, data: pl.LightningDataModule | DataLoader) -> GradientDatastore:
        """Compute (or resume) the store over ``data``: a ``LightningDataModule`` (its predict data) or a ``DataLoader``."""
        module = GradientFeatureModule(**self.module_kwargs)
        trainer = pl.Trainer(**self.trainer_kwargs)
        if isinstance(data, pl.LightningDataModule):
            trainer.predict(module, datamodule=data, return_predictions=False)
        else:
            trainer.predict(module, dataloaders=data, return_predictions=False)
        return GradientDatastore.open(module.output_dir)
