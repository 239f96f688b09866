"""The S2L loss-trajectory pass: each example's response-token mean loss under each saved checkpoint.

:class:`LossTrajectoryModule` (with the shared
:class:`~lightning_less.callbacks.store_writer.ShardedStoreWriter`) computes them from saved
checkpoints (full models saved with ``save_pretrained``, or PEFT adapter dirs on a base
model) in one ``trainer.predict`` pass over padded batches of any ``DataLoader`` or
``LightningDataModule`` of HF-style dict batches (``index`` optional; the store records what
the data is, docs/architecture.md "Running a pass on your own project"). It resumes (a done mask per
checkpoint), shards under DDP (each rank writes ``<output>.shards/rank_<r>_of_<w>``, rank 0
merges them, equal to one process) and refuses to mix stores built differently.
:func:`compute_trajectories` runs it; ``configs/tiny/trajectories.yaml`` is the CLI form.
To record losses during the proxy's own training instead, use
:class:`~lightning_less.callbacks.loss_trajectory.LossTrajectoryCallback`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from typing_extensions import override

from lightning_less.callbacks.save_pretrained import CHECKPOINT_INFO
from lightning_less.callbacks.store_writer import ShardedStoreWriter, batch_rows, take_rows
from lightning_less.data.records import file_sha256
from lightning_less.modules.losses import example_losses
from lightning_less.stores.datastore import GradientDatastore
from lightning_less.stores.provenance import DataIdentity, check_batch
from lightning_less.stores.trajectory import FEATURE_KIND, LOSS_DEFINITION, LOSS_DIM, NO_PROJECTOR, TrajectoryStore


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def checkpoint_kind(path: str | os.PathLike) -> str:
    """``"adapter"`` (a PEFT adapter dir) or ``"full"`` (a ``save_pretrained`` model dir)."""
    path = Path(path)
    if (path / "adapter_config.json").exists():
        return "adapter"
    if (path / "config.json").exists():
        return "full"
    raise ValueError(f"{path} is neither a PEFT adapter (adapter_config.json) nor a saved model (config.json)")


def resolve_checkpoints(checkpoints: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """An explicit list of checkpoint dirs (kept in order), or a root whose checkpoint subdirs are taken
    in natural name order (``step_9`` before ``step_10``)."""
    if isinstance(checkpoints, (str, os.PathLike)):
        root = Path(checkpoints)
        if (root / "adapter_config.json").exists() or (root / "config.json").exists():
            return [root]
        if not root.is_dir():
            raise FileNotFoundError(f"no checkpoint directory {root}")
        found = [p for p in root.iterdir() if p.is_dir() and ((p / "adapter_config.json").exists() or (p / "config.json").exists())]
        if not found:
            raise ValueError(f"{root} holds no checkpoint directories (with adapter_config.json or config.json)")
        return sorted(found, key=lambda p: _natural_key(p.name))
    return [Path(c) for c in checkpoints]


def _checkpoint_step(path: Path) -> int | None:
    for name, key in ((CHECKPOINT_INFO, "global_step"), ("snapshot.json", "global_step"), ("trainer_state.json", "global_step")):
        if (path / name).exists():
            value = json.loads((path / name).read_text()).get(key)
            if value is not None:
                return int(value)
    return None


_IGNORED_ADAPTER_KEYS = ("base_model_name_or_path", "revision", "inference_mode", "peft_version")


def _adapter_config(path: Path) -> dict[str, Any]:
    config = json.loads((path / "adapter_config.json").read_text())
    return {k: v for k, v in config.items() if k not in _IGNORED_ADAPTER_KEYS}


def checkpoint_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """What makes two stores' checkpoints the same: name, kind, step and the weight files' sha256."""
    path = Path(path)
    kind = checkpoint_kind(path)
    weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin") and p.name != "optimizer_moments.safetensors")
    if not weights:
        raise ValueError(f"{path} holds no weight files (*.safetensors / *.bin)")
    info = {"name": path.name, "kind": kind, "global_step": _checkpoint_step(path),
            "weights_sha256": {p.name: file_sha256(p) for p in weights}}
    return info


# ---------------------------------------------------------------- the predict pass
class LossTrajectoryModule(pl.LightningModule):
    """Each example's response-token mean loss under every checkpoint, in ``predict_step``.

    For every batch it runs one forward per checkpoint whose rows in the batch are not yet
    done, swapping the checkpoint's weights into one model (only the LoRA / adapter weights
    for adapter checkpoints). The weights of every checkpoint are loaded once and kept
    (on the model's device unless ``weights_on_device=False``); swapping them costs a
    device-to-device copy, not a load.

    Args:
        checkpoints: checkpoint dirs in trajectory order, or a root holding them (natural
            name order). All full models saved with ``save_pretrained`` (same architecture),
            or all PEFT adapters of the same config on one base model.
        output_dir: the trajectory store to write (a compatible unfinished one is resumed).
        model_name_or_path: the base model of adapter checkpoints (default: the adapters'
            ``base_model_name_or_path``). Unused for full checkpoints' weights; the CLI also
            takes the tokenizer from it.
        dtype: weights dtype (``float32``, ``bfloat16``...; see ``load_causal_lm``).
        attn_implementation: passed to ``from_pretrained``.
        weights_on_device: keep every checkpoint's weights on the accelerator (fast swaps,
            T x the swapped weights in device memory) or on the host.
        overwrite: replace an existing store built differently (otherwise refused).
    """

    def __init__(
        self,
        checkpoints: str | list[str],
        output_dir: str,
        model_name_or_path: str | None = None,
        dtype: str | None = None,
        attn_implementation: str | None = None,
        weights_on_device: bool = True,
        overwrite: bool = False,
    ) -> None:
        super().__init__()
        from lightning_less.models.loading import load_causal_lm

        self.output_dir = Path(output_dir)
        self.overwrite = overwrite
        self.weights_on_device = weights_on_device
        self.checkpoint_dirs = resolve_checkpoints(checkpoints)
        if not self.checkpoint_dirs:
            raise ValueError("no checkpoints given")
        names = self.checkpoint_names
        if len(set(names)) != len(names):
            raise ValueError(f"checkpoint directory names must be distinct, got {names}")
        kinds = {checkpoint_kind(p) for p in self.checkpoint_dirs}
        if len(kinds) != 1:
            raise ValueError(f"checkpoints mix full models and adapters: {[str(p) for p in self.checkpoint_dirs]}")
        self.kind = kinds.pop()
        self.dtype_name = dtype
        first = self.checkpoint_dirs[0]
        if self.kind == "full":
            self.base_model = self.adapter_config = None
            self.model = load_causal_lm(str(first), dtype=dtype, attn_implementation=attn_implementation)
            names_to_swap = [n for n, _ in self.model.named_parameters()]
        else:
            from peft import PeftModel

            self.adapter_config = config = _adapter_config(first)
            for p in self.checkpoint_dirs[1:]:
                if _adapter_config(p) != config:
                    raise ValueError(f"adapter {p} has another config than {first}; all adapters must share one")
            self.base_model = model_name_or_path or json.loads((first / "adapter_config.json").read_text())["base_model_name_or_path"]
            base = load_causal_lm(self.base_model, dtype=dtype, attn_implementation=attn_implementation)
            self.model = PeftModel.from_pretrained(base, str(first))
            tag = f".{self.model.active_adapter}."
            names_to_swap = [n for n, _ in self.model.named_parameters() if tag in n]
        self.model.eval()
        self.model.requires_grad_(False)
        self._weights = [self._load_weights(p, names_to_swap, dtype, attn_implementation) for p in self.checkpoint_dirs]
        self._active: int | None = None
        self.store: GradientDatastore | None = None
        self.skip = False
        self.done: dict[str, np.ndarray] = {}

    @property
    def checkpoint_names(self) -> list[str]:
        return [p.name for p in self.checkpoint_dirs]

    @torch.no_grad()
    def _load_weights(self, path: Path, names: list[str], dtype: str | None, attn_implementation: str | None) -> dict[str, torch.Tensor]:
        params = dict(self.model.named_parameters())
        if self.kind == "full":
            from lightning_less.models.loading import load_causal_lm

            other = load_causal_lm(str(path), dtype=dtype, attn_implementation=attn_implementation)
            theirs = dict(other.named_parameters())
            if set(theirs) != set(params) or any(theirs[n].shape != params[n].shape for n in names):
                raise ValueError(f"{path} has another architecture than {self.checkpoint_dirs[0]}")
            return {n: theirs[n].detach().clone() for n in names}
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        result = set_peft_model_state_dict(self.model, load_peft_weights(str(path), device="cpu"))
        unexpected = [k for k in getattr(result, "unexpected_keys", []) if self.model.active_adapter in k or "lora" in k]
        if unexpected:
            raise ValueError(f"{path}: adapter weights {unexpected[:3]} do not fit the model")
        self._active = None
        return {n: params[n].detach().clone() for n in names}

    @override
    def configure_callbacks(self):
        return [ShardedStoreWriter("trajectory store")]

    def store_spec(self, data: DataIdentity) -> tuple[dict[str, Any], list[str], list[int], str]:
        """What :class:`ShardedStoreWriter` needs to create (or resume) the trajectory store."""
        return self.manifest(data), self.checkpoint_names, [LOSS_DIM], "float32"

    @override
    def setup(self, stage: str) -> None:
        if stage != "predict":
            raise RuntimeError("LossTrajectoryModule only runs `predict` (the trajectory pass)")

    @override
    def on_predict_start(self) -> None:
        if self.weights_on_device:
            self._weights = [{n: w.to(self.device) for n, w in ws.items()} for ws in self._weights]
        self._active = None

    def manifest(self, data: DataIdentity | None = None) -> dict[str, Any]:
        """The store manifest (the writer adds the data): everything needed to refuse mixing incompatible stores."""
        return {
            "feature_kind": FEATURE_KIND,
            "projector": NO_PROJECTOR,
            "loss": LOSS_DEFINITION,
            "source": "checkpoints",
            "checkpoint_kind": self.kind,
            "base_model": self.base_model,
            "adapter_config": self.adapter_config,
            "model_dtype": self.dtype_name,
            "checkpoints": [checkpoint_fingerprint(p) for p in self.checkpoint_dirs],
            "steps": [_checkpoint_step(p) for p in self.checkpoint_dirs],
        }

    @torch.no_grad()
    def _activate(self, i: int) -> None:
        if self._active == i:
            return
        params = dict(self.model.named_parameters())
        for n, w in self._weights[i].items():
            params[n].copy_(w)
        self._active = i

    @override
    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict | None:
        if self.skip:
            return None
        check_batch(batch)
        index = batch_rows(self.trainer, batch)
        order = list(range(len(self.checkpoint_dirs)))
        if self._active is not None:  # start with the weights already in place: one swap fewer per batch
            order = order[self._active :] + order[: self._active]
        out: list[tuple[str, int, np.ndarray, np.ndarray]] = []
        with torch.no_grad():
            for i in order:
                name = self.checkpoint_names[i]
                todo = ~self.done[name][index]
                if not todo.any():
                    continue
                sub = batch if todo.all() else take_rows(batch, todo)
                self._activate(i)
                losses = example_losses(self.model, sub).double().cpu().numpy()
                if not np.isfinite(losses).all():
                    raise ValueError(f"checkpoint {name}: non-finite loss for indices {index[todo][~np.isfinite(losses)][:10].tolist()}")
                out.append((name, LOSS_DIM, index[todo], losses[:, None]))
        return {"rows": out} if out else None


def compute_trajectories(
    checkpoints: str | Sequence[str],
    files: Sequence[str],
    output_dir: str | os.PathLike,
    model_name_or_path: str | None = None,
    tokenizer_name_or_path: str | None = None,
    max_length: int = 2048,
    template: str = "tulu",
    batch_size: int = 16,
    padding_side: str = "right",
    trainer_kwargs: dict[str, Any] | None = None,
    predict_batching: str = "length",
    **module_kwargs: Any,
) -> TrajectoryStore:
    """Run the trajectory pass of ``checkpoints`` over ``files`` into ``output_dir``; return the store.

    The tokenizer comes from ``tokenizer_name_or_path``, else ``model_name_or_path``, else
    the first checkpoint. Batches are grouped by length unless ``predict_batching="file_order"``.
    """
    from lightning_less.data.datamodule import InstructionDataModule

    module = LossTrajectoryModule(checkpoints, str(output_dir), model_name_or_path=model_name_or_path, **module_kwargs)
    tokenizer = tokenizer_name_or_path or model_name_or_path or str(module.checkpoint_dirs[0])
    data = InstructionDataModule(predict_files=list(files), tokenizer_name_or_path=tokenizer, max_length=max_length,
                                 template=template, eval_batch_size=batch_size, padding_side=padding_side,
                                 predict_batching=predict_batching)
    kwargs = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
              **(trainer_kwargs or {})}
    pl.Trainer(**kwargs).predict(module, datamodule=data, return_predictions=False)
    return TrajectoryStore(output_dir)

