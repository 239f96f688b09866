"""S2L loss trajectories (ALGORITHMS.md 2): each example's response-token mean loss at each checkpoint.

Two ways to record them, one store format:

* :class:`LossTrajectoryModule` (+ the shared :class:`~lightning_less.gradients.writer.ShardedStoreWriter`) computes them afterwards from
  saved checkpoints (full models saved with ``save_pretrained``, or PEFT adapter dirs on a
  base model) in one ``trainer.predict`` pass over padded batches. It resumes (a done mask
  per checkpoint), shards under DDP (each rank writes ``<output>.shards/rank_<r>_of_<w>``,
  rank 0 merges them, equal to one process) and refuses to mix stores built differently.
  :func:`compute_trajectories` runs it; ``configs/tiny/trajectories.yaml`` is the CLI form.
* :class:`LossTrajectoryCallback` records them during the proxy's own training at chosen
  optimizer steps and/or epoch ends (resumable through the Lightning checkpoint, via its
  ``state_dict``); :class:`SavePretrainedCallback` saves ``save_pretrained`` checkpoints
  on the same schedule, for the afterwards route.

The store is a :class:`~lightning_less.gradients.datastore.GradientDatastore` with the
checkpoints as its snapshots, ``dims=[1]``, ``dtype="float32"``, ``feature_kind="loss"``
and ``projector={"kind": "none"}``. Examples with no response token left after truncation
(``InstructionDataset.dropped``) have no defined loss: their rows hold 0 on disk (the
datastore accepts only finite values) and are listed in the manifest's
``excluded_indices`` / ``excluded_ids``; :meth:`TrajectoryStore.read` returns them as NaN,
never 0, so the S2L sampler excludes and reports them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Subset

from lightning_less.data.records import file_sha256
from lightning_less.gradients.datastore import GradientDatastore
from lightning_less.gradients.writer import ShardedStoreWriter
from lightning_less.modules.losses import per_example_loss

FEATURE_KIND = "loss"
LOSS_DIM = 1
NO_PROJECTOR = {"kind": "none"}
LOSS_DEFINITION = "response_token_mean"
CHECKPOINT_INFO = "checkpoint.json"  # written by SavePretrainedCallback next to the weights

__all__ = [
    "LossTrajectoryCallback",
    "LossTrajectoryModule",
    "SavePretrainedCallback",
    "TrajectoryStore",
    "compute_trajectories",
    "example_losses",
    "record_losses",
    "resolve_checkpoints",
]


# --------------------------------------------------------------------------- losses
def example_losses(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Per-example response-token mean losses ``[B]`` of one padded batch (one forward).

    Position ids are taken from the attention mask, so left padding gives every example
    the positions it has alone (models with absolute position embeddings included).
    """
    mask = batch["attention_mask"]
    position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=position_ids).logits
    return per_example_loss(logits, batch["labels"])


@torch.no_grad()
def record_losses(model: torch.nn.Module, loader: DataLoader, n: int, device: torch.device | str | None = None) -> np.ndarray:
    """Per-example token-mean losses ``[n]`` (NaN for indices the loader does not cover)."""
    was_training = model.training
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    out = np.full(n, np.nan, dtype=np.float64)
    try:
        for batch in loader:
            batch = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "labels")} | {"index": batch["index"]}
            out[batch["index"].numpy()] = example_losses(model, batch).double().cpu().numpy()
    finally:
        model.train(was_training)
    return out


# ------------------------------------------------------------------------ manifests
def data_manifest(dataset) -> dict[str, Any]:
    """The data part of a manifest: files with their sha256, max_length and template."""
    return {
        "files": [{"path": str(f), "sha256": file_sha256(f)} for f in dataset.files],
        "max_length": dataset.max_length,
        "template": dataset.template,
    }


def _excluded(dataset) -> dict[str, Any]:
    return {"excluded_indices": [r.index for r in dataset.dropped], "excluded_ids": [r.id for r in dataset.dropped]}


def check_trajectory_data(manifest: dict[str, Any], files: Sequence[str | os.PathLike], n_examples: int | None = None) -> None:
    """Refuse trajectories recorded on other data than ``files`` (compared by sha256, in order)."""
    recorded = [f["sha256"] for f in manifest.get("data", {}).get("files", [])]
    given = [file_sha256(f) for f in files]
    if recorded != given:
        raise ValueError(f"the trajectories were recorded on other data ({[f['path'] for f in manifest['data']['files']]}, "
                         f"sha256 {recorded}) than {list(map(str, files))} (sha256 {given})")
    if n_examples is not None and manifest.get("n_examples") != n_examples:
        raise ValueError(f"the trajectories have {manifest.get('n_examples')} rows, the data {n_examples} records")


# ------------------------------------------------------------------------ the store
class TrajectoryStore:
    """Reader (and whole-array writer) of a trajectory store: a loss ``GradientDatastore``.

    ``read()`` returns ``(trajectories [n_examples, n_checkpoints] float64, manifest)``,
    in dataset order and checkpoint order, NaN on the manifest's ``excluded_indices``.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def open(self) -> GradientDatastore:
        store = GradientDatastore.open(self.path)
        m = store.manifest
        if m.get("feature_kind") != FEATURE_KIND or store.dims != [LOSS_DIM]:
            raise ValueError(f"{self.path} is not a loss-trajectory store (feature_kind={m.get('feature_kind')!r}, "
                             f"dims={store.dims})")
        return store

    def read(self) -> tuple[np.ndarray, dict[str, Any]]:
        """The trajectories and the manifest; raises if the store is missing or unfinished."""
        if not (self.path / "manifest.json").exists():
            raise FileNotFoundError(f"{self.path} is not a trajectory store (no manifest.json)")
        if (self.path / "trajectories.npy").exists():
            raise ValueError(f"{self.path} is a trajectory store of an older format (trajectories.npy); record it again")
        store = self.open()
        if not store.is_complete():
            pending = {s: int(store.pending(s).size) for s in store.snapshots}
            raise RuntimeError(f"{self.path} is an unfinished trajectory store (rows pending per checkpoint: {pending}); "
                               "run the trajectory pass again to resume it")
        traj = np.stack([np.asarray(store.features(s, LOSS_DIM))[:, 0] for s in store.snapshots], axis=1).astype(np.float64)
        manifest = store.manifest
        traj[np.asarray(manifest.get("excluded_indices", []), dtype=np.int64)] = np.nan
        return traj, manifest

    def write(self, trajectories: np.ndarray, checkpoints: Sequence[str], manifest: dict[str, Any],
              overwrite: bool = False) -> GradientDatastore:
        """Write a whole ``[n, T]`` array at once (NaN rows = no defined loss, listed as excluded)."""
        x = np.asarray(trajectories, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(checkpoints):
            raise ValueError(f"trajectories of shape {x.shape} for {len(checkpoints)} checkpoints")
        undefined = np.isnan(x).all(axis=1)
        bad = ~undefined & ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise ValueError(f"non-finite losses (a diverged proxy?) for indices {np.flatnonzero(bad)[:10].tolist()}")
        if (self.path / "manifest.json").exists():
            if not overwrite:
                raise FileExistsError(f"{self.path} already holds a store; pass overwrite=True to replace it")
            GradientDatastore._remove(self.path)
        full = {**manifest, "feature_kind": FEATURE_KIND, "projector": NO_PROJECTOR,
                "excluded_indices": np.flatnonzero(undefined).tolist()}
        store = GradientDatastore.create(self.path, full, list(checkpoints), [LOSS_DIM], x.shape[0], dtype="float32")
        rows = np.arange(x.shape[0])
        for j, name in enumerate(checkpoints):
            store.write(name, LOSS_DIM, rows, np.where(undefined, 0.0, x[:, j])[:, None])
            store.mark_done(name, rows)
        store.finalize()
        return store

    @staticmethod
    def check_compatible(a: dict, b: dict, keys: Sequence[str] = ("data", "n_examples", "checkpoints")) -> None:
        diffs = [f"{k}: {a.get(k)!r} != {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]
        if diffs:
            raise ValueError("incompatible trajectory stores: " + "; ".join(diffs))


# ----------------------------------------------------------------------- checkpoints
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
        from lightning_less.modules.lora import load_causal_lm

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
            from lightning_less.modules.lora import load_causal_lm

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

    def configure_callbacks(self):
        return [ShardedStoreWriter("trajectory store")]

    def store_spec(self, dataset) -> tuple[dict[str, Any], list[str], list[int], str]:
        """What :class:`ShardedStoreWriter` needs to create (or resume) the trajectory store."""
        return self.manifest(dataset), self.checkpoint_names, [LOSS_DIM], "float32"

    def setup(self, stage: str) -> None:
        if stage != "predict":
            raise RuntimeError("LossTrajectoryModule only runs `predict` (the trajectory pass)")

    def on_predict_start(self) -> None:
        if self.weights_on_device:
            self._weights = [{n: w.to(self.device) for n, w in ws.items()} for ws in self._weights]
        self._active = None

    def manifest(self, dataset) -> dict[str, Any]:
        """The store manifest: everything needed to refuse mixing incompatible stores."""
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
            "data": data_manifest(dataset),
            **_excluded(dataset),
        }

    @torch.no_grad()
    def _activate(self, i: int) -> None:
        if self._active == i:
            return
        params = dict(self.model.named_parameters())
        for n, w in self._weights[i].items():
            params[n].copy_(w)
        self._active = i

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict | None:
        if self.skip:
            return None
        index = batch["index"].cpu().numpy()
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
                sub = batch
                if not todo.all():
                    keep = torch.as_tensor(np.flatnonzero(todo), device=batch["input_ids"].device)
                    sub = {k: v[keep] for k, v in batch.items() if isinstance(v, torch.Tensor)}
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
    **module_kwargs: Any,
) -> TrajectoryStore:
    """Run the trajectory pass of ``checkpoints`` over ``files`` into ``output_dir``; return the store.

    The tokenizer comes from ``tokenizer_name_or_path``, else ``model_name_or_path``, else
    the first checkpoint.
    """
    from lightning_less.data.datamodule import InstructionDataModule

    module = LossTrajectoryModule(checkpoints, str(output_dir), model_name_or_path=model_name_or_path, **module_kwargs)
    tokenizer = tokenizer_name_or_path or model_name_or_path or str(module.checkpoint_dirs[0])
    data = InstructionDataModule(predict_files=list(files), tokenizer_name_or_path=tokenizer, max_length=max_length,
                                 template=template, eval_batch_size=batch_size, padding_side=padding_side)
    kwargs = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
              **(trainer_kwargs or {})}
    pl.Trainer(**kwargs).predict(module, datamodule=data, return_predictions=False)
    return TrajectoryStore(output_dir)


# ------------------------------------------------------------------- during training
class _Schedule:
    """When to act during training: every n optimizer steps, at given steps, at epoch ends."""

    def _init_schedule(self, every_n_steps: int, steps: Iterable[int] | None, at_epoch_end: bool) -> None:
        if every_n_steps < 0:
            raise ValueError("every_n_steps must be >= 0")
        self.every_n_steps = int(every_n_steps)
        self.at_steps = sorted({int(s) for s in (steps or [])})
        if any(s <= 0 for s in self.at_steps):
            raise ValueError(f"steps must be positive optimizer steps, got {self.at_steps}")
        self.at_epoch_end = at_epoch_end
        if not (self.every_n_steps or self.at_steps or at_epoch_end):
            raise ValueError("nothing to record: set every_n_steps, steps or at_epoch_end")

    def _due_at_step(self, step: int) -> bool:
        return step > 0 and ((self.every_n_steps and step % self.every_n_steps == 0) or step in self.at_steps)


def step_dirname(step: int) -> str:
    return f"step_{step:06d}"


class LossTrajectoryCallback(_Schedule, Callback):
    """Record every pool example's loss at chosen optimizer steps of the proxy's own training.

    The pool is every record of the datamodule's ``train_files`` (not only a sampled
    fraction), tokenized as for training, batched with its ``eval_batch_size`` (or
    ``batch_size``) and ``padding_side``. Under DDP each rank computes every
    ``world_size``-th example and the columns are gathered. Columns are kept with the
    recorded steps in the callback's ``state_dict`` (so a run resumed from a Lightning
    checkpoint keeps them, even when pointed at another ``output_dir``; one instance per
    Trainer) and the trajectory store is written by rank 0 when training ends, named
    ``step_XXXXXX`` per recorded step.

    Args:
        output_dir: the trajectory store written when training ends.
        every_n_steps: record after every n optimizer steps (0: never by steps).
        steps: also record after these optimizer steps.
        at_epoch_end: also record at each training epoch end.
        batch_size: batch size of the loss pass (default: the datamodule's eval batch size).
        overwrite: replace an existing store at ``output_dir`` (otherwise training refuses to start).
    """

    def __init__(self, output_dir: str, every_n_steps: int = 0, at_epoch_end: bool = True, batch_size: int | None = None,
                 overwrite: bool = False, steps: list[int] | None = None) -> None:
        self._init_schedule(every_n_steps, steps, at_epoch_end)
        self.output_dir = output_dir
        self.batch_size = batch_size
        self.overwrite = overwrite
        self.columns: list[np.ndarray] = []
        self.steps: list[int] = []
        self.epochs: list[int] = []
        self._ds = None

    def _dataset(self, trainer: pl.Trainer):
        if self._ds is None:
            from lightning_less.data.datamodule import InstructionDataset

            dm = trainer.datamodule
            if dm is None or not getattr(dm, "train_files", None):
                raise RuntimeError("LossTrajectoryCallback needs an InstructionDataModule with train_files (the pool)")
            if dm.train_fraction is None and dm.train_indices is None:
                self._ds = dm._dataset("train")
            else:  # the proxy trains on a subset: trajectories still cover every record of the pool
                self._ds = InstructionDataset(dm.train_files, dm.tokenizer, max_length=dm.max_length, template=dm.template)
        return self._ds

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._ds = None  # the pool of this run's datamodule

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (Path(self.output_dir) / "manifest.json").exists() and not self.overwrite:
            raise FileExistsError(f"{self.output_dir} already holds a store; pass overwrite=True to replace it")

    @torch.no_grad()
    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from lightning_less.data.datamodule import InstructionCollator

        step = trainer.global_step
        if self.steps and self.steps[-1] == step:
            return
        ds = self._dataset(trainer)
        dm = trainer.datamodule
        shard = Subset(ds, range(trainer.global_rank, len(ds), trainer.world_size)) if trainer.world_size > 1 else ds
        loader = DataLoader(shard, batch_size=self.batch_size or dm.eval_batch_size, shuffle=False,
                            collate_fn=InstructionCollator(dm.tokenizer.pad_token_id, dm.padding_side))
        model = getattr(pl_module, "model", pl_module)
        with trainer.precision_plugin.predict_step_context():
            column = record_losses(model, loader, len(ds.records), pl_module.device)
        if trainer.world_size > 1:  # rows are disjoint across ranks: fmax keeps the one non-NaN value
            gathered = trainer.strategy.all_gather(torch.from_numpy(column).to(pl_module.device))
            column = torch.stack(list(gathered)).nan_to_num(nan=float("-inf")).amax(0).cpu().numpy()
            column[np.isneginf(column)] = np.nan
        dropped = np.asarray([r.index for r in ds.dropped], dtype=np.int64)
        column[dropped] = np.nan
        self.columns.append(column)
        self.steps.append(step)
        self.epochs.append(trainer.current_epoch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._due_at_step(trainer.global_step):
            self._record(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.at_epoch_end:
            self._record(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or not self.columns:
            return
        ds = self._dataset(trainer)
        names = [step_dirname(s) for s in self.steps]
        hparams = getattr(pl_module, "hparams", None) or {}
        manifest = {
            "loss": LOSS_DEFINITION,
            "source": "training",
            "model": hparams.get("model_name_or_path"),
            "checkpoints": [{"name": n, "global_step": s, "epoch": e} for n, s, e in zip(names, self.steps, self.epochs)],
            "steps": list(self.steps),
            "data": data_manifest(ds),
            "excluded_ids": [r.id for r in ds.dropped],
        }
        TrajectoryStore(self.output_dir).write(np.stack(self.columns, axis=1), names, manifest, overwrite=self.overwrite)
        rank_zero_info(f"loss trajectories at steps {self.steps} written to {self.output_dir}")

    def state_dict(self) -> dict[str, Any]:
        return {"columns": [torch.from_numpy(c) for c in self.columns], "steps": list(self.steps), "epochs": list(self.epochs)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.columns = [np.asarray(c, dtype=np.float64) for c in state_dict["columns"]]
        self.steps = [int(s) for s in state_dict["steps"]]
        self.epochs = [int(e) for e in state_dict.get("epochs", [-1] * len(self.steps))]


class SavePretrainedCallback(_Schedule, Callback):
    """Save the trained model (``save_pretrained``: full model or PEFT adapter) on a step schedule.

    Writes ``<dirpath>/step_XXXXXX/`` (+ ``checkpoint.json`` with ``global_step`` and
    ``epoch``) from rank 0, for :class:`LossTrajectoryModule` afterwards (the S2L
    reference saves a proxy checkpoint every 500 steps).

    Args:
        dirpath: directory receiving one subdirectory per saved step.
        every_n_steps: save after every n optimizer steps (0: never by steps).
        steps: also save after these optimizer steps.
        at_epoch_end: also save at each training epoch end.
        save_tokenizer: also save the LightningModule's ``tokenizer`` (if it has one) into each dir.
    """

    def __init__(self, dirpath: str, every_n_steps: int = 0, steps: list[int] | None = None, at_epoch_end: bool = False,
                 save_tokenizer: bool = True) -> None:
        self._init_schedule(every_n_steps, steps, at_epoch_end)
        self.dirpath = Path(dirpath)
        self.save_tokenizer = save_tokenizer
        self.saved: list[int] = []

    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        if self.saved and self.saved[-1] == step:
            return
        self.saved.append(step)
        if not trainer.is_global_zero:
            return
        path = self.dirpath / step_dirname(step)
        model = getattr(pl_module, "model", pl_module)
        model.save_pretrained(str(path))
        tokenizer = getattr(pl_module, "tokenizer", None) if self.save_tokenizer else None
        if tokenizer is not None:
            tokenizer.save_pretrained(str(path))
        (path / CHECKPOINT_INFO).write_text(json.dumps({"global_step": step, "epoch": trainer.current_epoch}) + "\n")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._due_at_step(trainer.global_step):
            self._save(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.at_epoch_end:
            self._save(trainer, pl_module)
