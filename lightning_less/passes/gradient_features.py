"""``GradientDumpLoop``: LESS step 2 (docs/algorithms.md §1.2-1.4) as a ``trainer.predict`` pass.

Lightning 2.x keeps its loop classes private, so the "loop" is an orchestrator around
``trainer.predict`` (docs/architecture.md): :class:`GradientFeatureModule` computes, for every batch
and every snapshot, the per-example LoRA gradients in one backward pass, Adam-transforms
them (``adam``, pool) or not (``sgd``, targets), projects them to every requested dim,
and :class:`~lightning_less.callbacks.store_writer.ShardedStoreWriter` writes the rows into a
:class:`GradientDatastore`.

* Resume: rows already done are skipped (an example's features never depend on its
  batch, so a partial batch gives the same rows).
* DDP: each rank writes its own shard store (``<output>.shards/rank_<r>``); when
  predict ends, rank 0 merges the shards into ``<output>``, equal to a one-process run.
* Examples with no response token (see ``InstructionDataset.dropped``) get no features;
  their indices are listed in the manifest as ``excluded_indices``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from typing_extensions import override

from lightning_less.callbacks.snapshot import Snapshot, list_snapshots, load_snapshot
from lightning_less.data.records import file_sha256
from lightning_less.stores.datastore import GradientDatastore
from lightning_less.gradients.per_example import PerExampleLoRAGradients, adam_transform, flatten_moments
from lightning_less.gradients.projectors import make_projector
from lightning_less.callbacks.store_writer import ShardedStoreWriter

FeatureKind = Literal["adam", "sgd"]


def resolve_snapshots(snapshots: str | Sequence[str]) -> list[Path]:
    """A snapshot root directory (all ``epoch_*`` inside) or an explicit list of snapshot dirs."""
    if isinstance(snapshots, (str, os.PathLike)):
        root = Path(snapshots)
        if (root / "snapshot.json").exists():
            return [root]
        return list_snapshots(root)
    return [Path(s) for s in snapshots]


def snapshot_fingerprint(snap: Snapshot) -> dict[str, Any]:
    """What makes two stores' snapshots the same: name, epoch, lr and the adapter's bytes."""
    adapter = snap.path / "adapter_model.safetensors"
    return {
        "name": snap.name,
        "epoch": snap.epoch,
        "lr": snap.lr,
        "adapter_sha256": file_sha256(adapter) if adapter.exists() else None,
        "base_model": snap.base_model,
    }


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
        model_name_or_path: base model; defaults to the snapshots' ``base_model``.
        dtype: base model dtype (see ``LoRAInstructionTuningModule``).
        store_dtype: ``float16`` (as the reference) or ``float32``.
        overwrite: replace an existing store built differently (a compatible one is resumed).
        projection_buffer_bytes: for projectors that cost a fixed time per call (TRAK's
            ``BasicProjector`` regenerates its matrix on every call unless cached), collect
            up to this many bytes of gradient rows before projecting them in one call. Rows
            are marked done only once written, so an interrupted run recomputes them.
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
        model_name_or_path: str | None = None,
        dtype: str | None = None,
        attn_implementation: str | None = None,
        store_dtype: str = "float16",
        overwrite: bool = False,
        projection_buffer_bytes: int = 1 << 30,
    ) -> None:
        super().__init__()
        from peft import PeftModel

        from lightning_less.models.loading import load_causal_lm

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
        if not self.snapshots:
            raise ValueError("no snapshots given")
        names = [s.name for s in self.snapshots]
        if len(set(names)) != len(names):
            raise ValueError(f"snapshot directory names must be distinct, got {names}")
        base = model_name_or_path or self.snapshots[0].base_model
        model = load_causal_lm(base, dtype=dtype, attn_implementation=attn_implementation)
        self.model = PeftModel.from_pretrained(model, str(self.snapshots[0].path), is_trainable=True)
        self.model.eval()  # LoRA dropout off (docs/algorithms.md §1.2)
        self.grads = PerExampleLoRAGradients(self.model)
        # Each snapshot's LoRA weights, keyed like named_parameters(), swapped in per batch.
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        self._weights: list[dict[str, torch.Tensor]] = []
        self._moments: list[tuple[torch.Tensor, torch.Tensor]] = []
        params = dict(self.model.named_parameters())
        for snap in self.snapshots:
            if snap.param_names != self.grads.param_names:
                missing = sorted(set(self.grads.param_names) ^ set(snap.param_names))[:3]
                raise ValueError(f"{snap.path}: its parameter names differ from the model's LoRA parameters (e.g. {missing})")
            set_peft_model_state_dict(self.model, load_peft_weights(str(snap.path), device="cpu"))
            self._weights.append({n: params[n].detach().clone() for n in self.grads.param_names})
            if feature == "adam":
                self._moments.append(flatten_moments({f"{n}.{k}": t for n in snap.param_names for k, t in
                                                     (("exp_avg", snap.exp_avg[n]), ("exp_avg_sq", snap.exp_avg_sq[n]))},
                                                    self.grads.param_names))
        self.projectors: dict[int, Any] = {}
        self.store: GradientDatastore | None = None
        self.skip = False  # set by the writer: the store is already complete
        self.done: dict[str, np.ndarray] = {}  # set by the writer: done rows per snapshot
        self.projection_buffer_bytes = projection_buffer_bytes
        self._pending: list[tuple[np.ndarray, dict[str, torch.Tensor]]] = []
        self._pending_rows = 0

    @property
    def snapshot_names(self) -> list[str]:
        return [s.name for s in self.snapshots]

    @override
    def configure_callbacks(self):
        return [ShardedStoreWriter("gradient datastore")]

    def store_spec(self, dataset) -> tuple[dict[str, Any], list[str], list[int], str]:
        """What :class:`ShardedStoreWriter` needs to create (or resume) this pass's store."""
        return self.manifest(dataset), self.snapshot_names, self.dims, self.store_dtype

    # ---------------------------------------------------------------- set up
    @override
    def setup(self, stage: str) -> None:
        if stage != "predict":
            raise RuntimeError("GradientFeatureModule only runs `predict` (the gradient pass)")
        device = self.device if self.device.type != "meta" else torch.device("cpu")
        self.projectors = {
            d: make_projector(self.projector_kind, self.grads.numel, d, seed=self.projector_seed, device=device,
                              **self.projector_kwargs)
            for d in self.dims
        }
        per_call = any(getattr(p, "regenerates_per_call", False) for p in self.projectors.values())
        row_bytes = 4 * self.grads.numel * len(self.snapshots)
        self.rows_per_call = max(1, self.projection_buffer_bytes // row_bytes) if per_call else 1

    def manifest(self, dataset) -> dict[str, Any]:
        """The store manifest: everything needed to refuse mixing incompatible stores."""
        return {
            "feature_kind": self.feature,
            "projector": {str(d): p.describe() for d, p in self.projectors.items()},
            "snapshot_info": [snapshot_fingerprint(s) for s in self.snapshots],
            "snapshot_lrs": [s.lr for s in self.snapshots],
            "adam": None if self.feature != "adam" else [{"betas": list(s.betas), "eps": s.eps} for s in self.snapshots],
            "data": {
                "files": [{"path": f, "sha256": file_sha256(f)} for f in dataset.files],
                "max_length": dataset.max_length,
                "template": dataset.template,
            },
            "excluded_indices": [r.index for r in dataset.dropped],
            "grad_dim": self.grads.numel,
        }

    # --------------------------------------------------------------- compute
    @override
    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict | None:
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "the gradient pass needs gradients, but predict runs under torch.inference_mode: "
                "create the Trainer with inference_mode=False (trainer.inference_mode: false in YAML)"
            )
        if self.skip:
            return None
        last = batch_idx + 1 >= self.trainer.num_predict_batches[dataloader_idx]
        index = batch["index"].cpu().numpy()
        todo = ~np.logical_and.reduce([self.done[s][index] for s in self.snapshot_names])
        if not todo.any():
            return self._buffer(None, {}, last)
        if not todo.all():
            keep = torch.as_tensor(np.flatnonzero(todo), device=batch["input_ids"].device)
            batch = {k: (v[keep] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            index = index[todo]
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
                rows[snap.name] = grads
        if chunked:
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

    Example::

        loop = GradientDumpLoop(snapshots="runs/warmup/snapshots", output_dir="runs/grads/pool",
                                feature="adam", dims=[8192], projector="trak_basic")
        store = loop.run(datamodule)          # a finished GradientDatastore
    """

    def __init__(self, trainer_kwargs: dict[str, Any] | None = None, **module_kwargs: Any) -> None:
        self.module_kwargs = module_kwargs
        self.trainer_kwargs = {"logger": False, "enable_checkpointing": False, **(trainer_kwargs or {}),
                               "inference_mode": False}

    def run(self, datamodule: pl.LightningDataModule) -> GradientDatastore:
        module = GradientFeatureModule(**self.module_kwargs)
        trainer = pl.Trainer(**self.trainer_kwargs)
        trainer.predict(module, datamodule=datamodule, return_predictions=False)
        return GradientDatastore.open(module.output_dir)
